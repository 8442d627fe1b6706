"""Tokenize a dataset into shards: `python launch/prepare_data.py data=NAME [data.key=value ...] [--out DIR]`.

Takes the same Hydra overrides as launch/train.py. Without --out the shards go to the cache entry
training would use (`data.cache_dir`), so a later `launch/train.py data=NAME` finds them; with --out
they go to DIR, for `data.shards_dir=DIR` (e.g. on a filesystem every node sees).

In parts (what `slurm/prepare.sbatch` runs as a job array): `--part I --parts N --out DIR` prepares
part I of N of the input files into DIR/parts/ (a finished part is skipped), and `--merge --parts N
--out DIR` merges the N parts into the shard folder DIR, the same shards a one-process run writes.

python launch/prepare_data.py data=c4_demo
python launch/prepare_data.py data=tinyshakespeare data.prep_workers=8 --out /shared/shards/shakespeare
python launch/prepare_data.py data=c4_demo data.path='/corpus/*.jsonl' --part 3 --parts 16 --out /shared/shards/c4
python launch/prepare_data.py data=c4_demo data.path='/corpus/*.jsonl' --merge --parts 16 --out /shared/shards/c4
"""

import logging
import sys
import time
from pathlib import Path

from llmtrain.cli import run
from llmtrain.config import load_config
from llmtrain.data import describe, ensure_prepared, merge_parts, prepare_part

_FLAGS = {"--out": str, "--part": int, "--parts": int}


def _split_args(argv: list[str]) -> tuple[dict, list[str]]:
    """({flag: value} for --out/--part/--parts/--merge, the Hydra overrides)."""
    flags: dict = {}
    overrides, args = [], iter(argv)
    for arg in args:
        name, _, value = arg.partition("=")
        if name == "--merge":
            flags["--merge"] = True
        elif name in _FLAGS:
            value = value or next(args, "") or sys.exit(f"{name} needs a value")
            try:
                flags[name] = _FLAGS[name](value)
            except ValueError:
                sys.exit(f"{name} needs an integer, got {value!r}")
        else:
            overrides.append(arg)
    if ("--part" in flags or "--merge" in flags) and ("--parts" not in flags or "--out" not in flags):
        sys.exit("--part and --merge need --parts N and --out DIR")
    if "--parts" in flags and "--part" not in flags and "--merge" not in flags:
        sys.exit("--parts N needs --part I (prepare one part) or --merge")
    return flags, overrides


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if {"-h", "--help"} & set(sys.argv[1:]):
        sys.exit(__doc__)
    flags, overrides = _split_args(sys.argv[1:])
    out = Path(flags["--out"]) if "--out" in flags else None

    def prepare() -> None:
        data = load_config(overrides).data
        started = time.perf_counter()
        if "--part" in flags:
            folder = prepare_part(data, out, flags["--part"], flags["--parts"])
            print(f"part {flags['--part']} of {flags['--parts']}: {folder}")
        else:
            folder = (
                merge_parts(data, out, flags["--parts"]) if "--merge" in flags else ensure_prepared(data, out)
            )
            print(describe(data, folder))
        print(f"  this call took {time.perf_counter() - started:.1f}s")

    run(prepare)
