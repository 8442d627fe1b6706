"""Compare runs from their run directories alone: no W&B account, no network.

Each run dir holds `config.yaml` (resolved) and `metrics.jsonl`; that is enough to answer "what did
these runs change, and what did it do": the config keys whose values differ, and per run the final
and best losses, tokens, steps and throughput. `plot_metric` draws the curves side by side.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean
from typing import Any

from omegaconf import OmegaConf

from llmtrain.config import from_yaml, to_dict
from llmtrain.config.diff import differing_keys, flatten

# Always differs between two runs and is already the column header.
IGNORED_KEYS = frozenset({"run.dir"})


@dataclass
class RunRecord:
    """What one run dir says about itself."""

    dir: Path
    config: dict[str, Any]
    metrics: list[dict[str, Any]] = field(default_factory=list)

    def values(self, key: str) -> list[tuple[int, float]]:
        """(step, value) for every logged line that has a finite `key`."""
        return [
            (m["step"], float(m[key]))
            for m in self.metrics
            if isinstance(m.get(key), (int, float)) and math.isfinite(m[key])
        ]

    def final(self, key: str) -> float | None:
        values = self.values(key)
        return values[-1][1] if values else None

    def best(self, key: str) -> float | None:
        values = self.values(key)
        return min(v for _, v in values) if values else None


def _read_config(path: Path) -> dict[str, Any]:
    """The resolved config, filled with schema defaults for keys added since the run was made;
    the raw YAML if it no longer validates (a run from an older schema is still worth comparing)."""
    try:
        return to_dict(from_yaml(path))
    except Exception:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=False)  # type: ignore[return-value]


def load_run(run_dir: str | Path) -> RunRecord:
    run_dir = Path(run_dir)
    config_path, metrics_path = run_dir / "config.yaml", run_dir / "metrics.jsonl"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: is {run_dir} a run directory?")
    metrics = []
    if metrics_path.is_file():
        metrics = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    return RunRecord(run_dir, _read_config(config_path), metrics)


def labels(runs: list[RunRecord]) -> list[str]:
    """Shortest unique names: the dir name, or more of the path where two runs share it."""
    for depth in range(1, 1 + max(len(r.dir.parts) for r in runs)):
        names = ["/".join(r.dir.parts[-depth:]) for r in runs]
        if len(set(names)) == len(names):
            return names
    return [str(r.dir) for r in runs]


def run_stats(run: RunRecord) -> dict[str, Any]:
    steps = [m["step"] for m in run.metrics]
    throughput = [v for _, v in run.values("tokens_per_sec")]
    # The first interval includes startup (allocation, warmup): leave it out when there is more.
    steady = throughput[1:] or throughput
    return {
        "final loss": run.final("loss"),
        "best loss": run.best("loss"),
        "final val_loss": run.final("val_loss"),
        "best val_loss": run.best("val_loss"),
        "tokens": run.final("tokens"),
        "steps": max(steps) if steps else None,
        "tokens/s": mean(steady) if steady else None,
    }


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value.is_integer() and abs(value) >= 1000:
            return f"{int(value):,}"
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, list):
        return "[" + ",".join(_cell(v) for v in value) + "]"
    return str(value)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()

    return [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def compare_table(runs: list[RunRecord]) -> str:
    """Differing config keys, then the metrics, one column per run."""
    names = labels(runs)
    keys = [k for k in differing_keys([r.config for r in runs]) if k not in IGNORED_KEYS]
    flats = [flatten(r.config) for r in runs]
    out = []
    config_rows = [[k, *(_cell(f.get(k)) for f in flats)] for k in keys]
    if config_rows:
        out += _table(["config", *names], config_rows)
    else:
        out.append("config: identical (apart from run.dir)")
    out.append("")
    stats = [run_stats(r) for r in runs]
    out += _table(["metric", *names], [[k, *(_cell(s[k]) for s in stats)] for k in stats[0]])
    return "\n".join(out)


def plot_metric(runs: list[RunRecord], path: str | Path, metric: str = "loss") -> Path:
    """PNG of `metric` against step, one line per run (matplotlib, headless Agg backend)."""
    try:
        import matplotlib
    except ImportError as exc:
        raise SystemExit(
            "--plot needs matplotlib: pip install -e '.[plot]' (or pip install matplotlib)"
        ) from exc

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    plotted = 0
    for run, name in zip(runs, labels(runs)):
        points = run.values(metric)
        if points:
            steps, values = zip(*points)
            ax.plot(steps, values, label=name, marker="." if len(points) < 50 else None)
            plotted += 1
    if not plotted:
        plt.close(fig)
        raise ValueError(f"no run has finite '{metric}' values in its metrics.jsonl to plot")
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} by step")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
