"""Turn a Hydra multirun command line into one sbatch job per point, each with its own run directory.

    python launch/submit.py slurm/train.sbatch -m optim.lr=1e-4,3e-4 trainer.seed=1,2 model=small

Sweep syntax is Hydra's own (`a,b`, `range(1,4)`, `choice(...)`; quoted values keep their commas),
parsed by Hydra's override parser, so what sweeps here sweeps under `--multirun` too. Every point's
config is composed and validated before anything is queued: a typo should fail now, not after the
jobs waited hours for nodes. A point's run directory is fixed at submission
(`runs/<run.name>/sweep-<time>/<key=value,...>`), so a requeued job resumes its own point.
(Hydra's submitit launcher does the same from inside Hydra; this is smaller and testable offline.)
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser

from llmtrain.config import ConfigError, load_config


@dataclass(frozen=True)
class SweepPoint:
    """One job of a sweep: its name (the swept `key=value` pairs) and its full override list."""

    name: str
    overrides: list[str]


def expand(overrides: list[str], multirun: bool) -> list[SweepPoint]:
    """The cartesian product of the sweep overrides, each point keeping the fixed ones, in order."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    swept = [o for o in parsed if o.is_sweep_override()]
    if swept and not multirun:
        raise ConfigError(
            f"{swept[0].input_line!r} is a sweep: add -m to submit one job per value, or quote the value"
        )
    axes = [
        [(o, f"{o.get_key_element()}={value}") for value in o.sweep_string_iterator()]
        if o.is_sweep_override()
        # Fixed overrides pass through exactly as typed (quoting included).
        else [(o, o.input_line)]
        for o in parsed
    ]
    points = []
    for combo in itertools.product(*axes):
        name = ",".join(
            f"{o.key_or_group}={_dir_safe(line.split('=', 1)[1])}"
            for o, line in combo
            if o.is_sweep_override()
        )
        points.append(SweepPoint(name=name, overrides=[line for _, line in combo]))
    return points


def _dir_safe(value: str) -> str:
    return re.sub(r"[/\\'\"\s]", "_", value)


def with_run_dirs(points: list[SweepPoint], sweep_dir: Path) -> list[SweepPoint]:
    """Each point gets `run.dir=<sweep_dir>/<name>` (quoted: the name holds `=` and `,`)."""
    return [
        SweepPoint(
            p.name,
            [*(o for o in p.overrides if not o.startswith("run.dir=")), f"run.dir='{sweep_dir / p.name}'"],
        )
        for p in points
    ]


def sbatch(script: Path, overrides: list[str], sbatch_args: list[str]) -> str:
    """Submit one job; returns its id (`--parsable` prints `id` or `id;cluster`)."""
    exe = shutil.which("sbatch")
    if exe is None:
        raise RuntimeError("sbatch is not on PATH: run this on a SLURM login node")
    done = subprocess.run(
        [exe, "--parsable", *sbatch_args, str(script), *overrides], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"sbatch {script} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout.strip().split(";")[0]


def _job_dir(sbatch_args: list[str]) -> Path:
    """The job's working directory: sbatch's --chdir/-D if given, else here."""
    for i, arg in enumerate(sbatch_args):
        for flag in ("--chdir=", "-D"):
            if arg.startswith(flag) and len(arg) > len(flag):
                return Path(arg[len(flag) :])
        if arg in ("--chdir", "-D") and i + 1 < len(sbatch_args):
            return Path(sbatch_args[i + 1])
    return Path.cwd()


def submit(
    script: Path, overrides: list[str], multirun: bool, sbatch_args: list[str], dry_run: bool = False
) -> list[tuple[str, SweepPoint]]:
    """Validate every point, then submit one job each; returns (job id, point) pairs."""
    if not script.is_file():
        raise FileNotFoundError(f"no sbatch script {script}")
    points = expand(overrides, multirun)
    job_dir = _job_dir(sbatch_args)
    sweep_dir = None
    if multirun:
        base_cfg = load_config(points[0].overrides)
        base = Path(base_cfg.run.dir) if base_cfg.run.dir else Path("runs") / base_cfg.run.name
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        sweep_dir = (job_dir / base / f"sweep-{stamp}").resolve()
        points = with_run_dirs(points, sweep_dir)
    for point in points:
        try:
            load_config(point.overrides)
        except ConfigError as exc:
            raise ConfigError(f"sweep point {point.name or '(single job)'}: {exc}") from exc
    if dry_run:
        return [("(dry-run)", p) for p in points]
    # sbatch does not create the log folder, and a job whose --output it cannot open fails silently.
    (job_dir / "logs").mkdir(parents=True, exist_ok=True)
    submitted = [(sbatch(script, p.overrides, sbatch_args), p) for p in points]
    if sweep_dir is not None:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        record = {
            "script": str(script),
            "sbatch_args": sbatch_args,
            "points": [{"job_id": j, "name": p.name, "overrides": p.overrides} for j, p in submitted],
        }
        (sweep_dir / "sweep.json").write_text(json.dumps(record, indent=2) + "\n")
    return submitted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="launch/submit.py",
        description="Submit an sbatch script once, or once per point of a Hydra sweep (-m).",
        epilog="example: python launch/submit.py slurm/train.sbatch -m optim.lr=1e-4,3e-4 model=small",
    )
    parser.add_argument("script", type=Path, help="sbatch script, e.g. slurm/train.sbatch")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides; with -m, a,b or range() sweeps")
    parser.add_argument("-m", "--multirun", action="store_true", help="one job per sweep point")
    parser.add_argument(
        "--sbatch", action="append", default=[], metavar="OPT", help="sbatch option, e.g. --sbatch=--nodes=2"
    )
    parser.add_argument("--dry-run", action="store_true", help="validate and print, submit nothing")
    args = parser.parse_intermixed_args(argv)
    try:
        submitted = submit(args.script, args.overrides, args.multirun, args.sbatch, args.dry_run)
    except (ConfigError, FileNotFoundError, RuntimeError) as exc:
        print(f"submit: {exc}", file=sys.stderr)
        return 2
    for job_id, point in submitted:
        run_dir = next(
            (o.split("=", 1)[1].strip("'") for o in point.overrides if o.startswith("run.dir=")), None
        )
        where = run_dir or "runs/<run.name>/slurm-<job id>"
        print(f"job {job_id}\t{point.name or '-'}\t{where}")
    return 0
