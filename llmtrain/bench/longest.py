"""`launch/bench.py --longest --mem-cap-gib X`: the longest `data.seq_len` that trains within a
per-rank memory cap, for several layouts, next to `transformers.Trainer` on the same model.

Each variant is `NAME[:RANKS]=OVERRIDES` (overrides space-separated, over the command line's own),
e.g. `dp:2=strategy=fsdp` or `sp2:2=strategy=fsdp parallel.sp=2`; RANKS (default `--nproc`) ranks
run it under torchrun, a real multi-process job per probe. For each variant the search doubles the
length from `--start` while it fits, then bisects between the last fit and the first miss, on
multiples of `--granule` (rounded up to a multiple of parallel.sp, which must divide the length).
A length fits when every rank's resting state plus its step peak stays within the cap
(`llmtrain.bench.memory_probe` says what is counted). Memory, unlike time, is stable on a shared
CPU: the table reports each variant's longest length as a ratio to the others.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llmtrain.bench.memory_probe import MemoryProbe, read_probe
from llmtrain.config import ConfigError, load_config
from llmtrain.dist import ParallelDims

TRAINER = "transformers.Trainer"
OUT_OF_MEMORY = 1 << 62  # a probe's total when its job died of an accelerator OOM
DEFAULT_VARIANTS = ("dp:2=strategy=fsdp", "sp2:2=strategy=fsdp parallel.sp=2")


@dataclass(frozen=True)
class Variant:
    name: str
    ranks: int
    overrides: tuple[str, ...]
    hf_trainer: bool = False


def parse_variant(spec: str, default_ranks: int) -> Variant:
    """`NAME[:RANKS]=OVERRIDES` -> Variant; a malformed spec fails naming what was expected."""
    head, sep, rest = spec.partition("=")
    name, _, ranks = head.partition(":")
    if not sep or not name or (ranks and not ranks.isdigit()) or ranks == "0":
        raise ConfigError(
            f"--variant {spec!r}: expected NAME[:RANKS]=OVERRIDES, e.g. 'sp2:2=strategy=fsdp parallel.sp=2'"
        )
    return Variant(name, int(ranks) if ranks else default_ranks, tuple(rest.split()))


@dataclass
class SearchResult:
    """The longest length that fits (0: not even one granule), and every probe in order."""

    longest: int
    probes: list[MemoryProbe] = field(default_factory=list)

    @property
    def longest_probe(self) -> MemoryProbe | None:
        return next((p for p in self.probes if p.seq_len == self.longest), None)


def search_longest(
    probe: Callable[[int], MemoryProbe], cap_bytes: int, start: int, granule: int, limit: int
) -> SearchResult:
    """Longest multiple of `granule` up to `limit` whose probe's total fits `cap_bytes`.

    Doubling from `start` (rounded up to the granule) finds a fit and a miss, bisection narrows
    them to one granule. Memory grows with the length, so the first miss bounds the answer.
    """
    if granule < 1 or start < 1 or limit < granule:
        raise ValueError(
            f"need granule >= 1, start >= 1 and limit >= granule; got {granule}, {start}, {limit}"
        )
    result = SearchResult(longest=0)

    def fits(length: int) -> bool:
        p = probe(length)
        result.probes.append(p)
        return p.total_bytes <= cap_bytes

    length = min(-(-start // granule) * granule, limit // granule * granule)
    if fits(length):
        lo, hi = length, None
        while hi is None:
            if lo == limit // granule * granule:
                return SearchResult(lo, result.probes)  # the limit itself fits
            nxt = min(2 * lo, limit // granule * granule)
            if fits(nxt):
                lo = nxt
            else:
                hi = nxt
    else:
        lo, hi = 0, length
    while hi - lo > granule:
        mid = (lo + hi) // 2 // granule * granule
        if fits(mid):
            lo = mid
        else:
            hi = mid
    result.longest = lo
    return result


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_probe(
    script: Path, variant: Variant, overrides: list[str], seq_len: int, timeout_s: float
) -> MemoryProbe:
    """One probe as its own job: `python script --mem-probe OUT` alone, or under torchrun."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "probe.json"
        args = [str(script), "--mem-probe", str(out), *(["--vs-hf"] if variant.hf_trainer else [])]
        args += [
            *overrides,
            *_batch_overrides(variant, overrides),
            *variant.overrides,
            f"data.seq_len={seq_len}",
        ]
        cmd = [sys.executable, *args]
        if variant.ranks > 1:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(variant.ranks),
                   "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), *args]  # fmt: skip
        env = dict(os.environ)
        # Ranks sharing a machine's cores: one intra-op thread each unless the user chose otherwise.
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // variant.ranks)))
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
        if proc.returncode != 0 and "OutOfMemoryError" in proc.stderr:
            # A real device ran out before the cap was reached: the length does not fit either.
            return MemoryProbe(seq_len, variant.ranks, -1, -1, OUT_OF_MEMORY, float("nan"))
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(
                f"memory probe {variant.name} at data.seq_len={seq_len} failed ({proc.returncode}): "
                f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
            )
        return read_probe(out)


def _batch_overrides(variant: Variant, overrides: list[str]) -> list[str]:
    """One sequence per data-parallel rank per step (micro batch 1, no accumulation): the memory
    of one sequence on a rank, the quantity a longest-length search is about."""
    cfg = load_config([*overrides, *variant.overrides])
    dp = ParallelDims.from_config(cfg.parallel, variant.ranks).dp
    return [f"trainer.global_batch_size={dp}", "trainer.micro_batch_size=1"]


def _granule(variant: Variant, overrides: list[str], granule: int) -> int:
    """`granule` rounded up to what the variant's mesh needs of a length (parallel.sp divides it)."""
    cfg = load_config([*overrides, *variant.overrides])
    return math.lcm(granule, cfg.parallel.sp)


def table(results: dict[str, SearchResult], cap_bytes: int) -> str:
    mib = 2**20
    header = (
        f"{'variant':<24}{'longest seq_len':>16}{'resting MiB':>13}{'step peak MiB':>15}{'total MiB':>11}"
        f"{'probes':>8}"
    )
    lines = [f"per-rank cap {cap_bytes / 2**30:.3f} GiB", header, "-" * len(header)]
    for name, r in results.items():
        p = r.longest_probe
        figures = (
            f"{p.resting_bytes / mib:>13.1f}{p.step_peak_bytes / mib:>15.1f}{p.total_bytes / mib:>11.1f}"
            if p
            else f"{'-':>13}{'-':>15}{'-':>11}"
        )
        lines.append(f"{name:<24}{r.longest:>16,}{figures}{len(r.probes):>8}")
    names = list(results)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if results[a].longest and results[b].longest:
                hi, lo = (a, b) if results[a].longest >= results[b].longest else (b, a)
                lines.append(f"{hi} / {lo}: {results[hi].longest / results[lo].longest:.2f}x longest seq_len")
    return "\n".join(lines)


def run_longest(
    script: Path,
    overrides: list[str],
    specs: list[str],
    cap_gib: float,
    vs_hf: bool,
    nproc: int = 2,
    start: int = 512,
    granule: int = 256,
    limit: int = 1 << 20,
    json_path: Path | None = None,
    timeout_s: float = 900,
) -> dict[str, SearchResult]:
    """Search each variant (and the Trainer, one process, with `vs_hf`) and print the table."""
    variants = [parse_variant(s, nproc) for s in (specs or DEFAULT_VARIANTS)]
    if vs_hf:
        variants.append(Variant(TRAINER, 1, (), hf_trainer=True))
    cap_bytes = int(cap_gib * 2**30)
    results: dict[str, SearchResult] = {}
    for v in variants:
        g = _granule(v, overrides, granule)
        print(f"[longest] {v.name}: {v.ranks} rank(s), overrides {' '.join(v.overrides) or '-'}", flush=True)

        def probe(length: int, v: Variant = v) -> MemoryProbe:
            p = run_probe(script, v, overrides, length, timeout_s)
            verdict = "fits" if p.total_bytes <= cap_bytes else "over"
            print(
                f"[longest]   seq_len {length:>8,}: {p.total_bytes / 2**20:9.1f} MiB per rank, {verdict}",
                flush=True,
            )
            return p

        results[v.name] = search_longest(probe, cap_bytes, start, g, limit)
    print(table(results, cap_bytes))
    if json_path is not None:
        json_path.write_text(
            json.dumps(
                {"cap_bytes": cap_bytes, "overrides": overrides, "variants": {
                    n: {"longest": r.longest, "probes": [asdict(p) for p in r.probes]} for n, r in results.items()
                }},
                indent=2,
            ) + "\n"
        )  # fmt: skip
    return results
