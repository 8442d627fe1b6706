"""Tokenize a dataset into shards: `python launch/prepare_data.py data=NAME [data.key=value ...] [--out DIR]`.

Takes the same Hydra overrides as launch/train.py. Without --out the shards go to the cache entry
training would use (`data.cache_dir`), so a later `launch/train.py data=NAME` finds them; with --out
they go to DIR, for `data.shards_dir=DIR` (e.g. on a filesystem every node sees).

python launch/prepare_data.py data=c4_demo
python launch/prepare_data.py data=tinyshakespeare data.prep_workers=8 --out /shared/shards/shakespeare
"""

import logging
import sys
import time
from pathlib import Path

from llmtrain.cli import run
from llmtrain.config import load_config
from llmtrain.data import describe, ensure_prepared


def _split_out(argv: list[str]) -> tuple[Path | None, list[str]]:
    """(--out value, the Hydra overrides)."""
    out, overrides, args = None, [], iter(argv)
    for arg in args:
        if arg == "--out":
            out = Path(next(args, "") or sys.exit("--out needs a directory"))
        elif arg.startswith("--out="):
            out = Path(arg.split("=", 1)[1])
        else:
            overrides.append(arg)
    return out, overrides


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if {"-h", "--help"} & set(sys.argv[1:]):
        sys.exit(__doc__)
    out, overrides = _split_out(sys.argv[1:])

    def prepare() -> None:
        data = load_config(overrides).data
        started = time.perf_counter()
        folder = ensure_prepared(data, out)
        print(describe(data, folder))
        print(f"  this call took {time.perf_counter() - started:.1f}s")

    run(prepare)
