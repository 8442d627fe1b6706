"""Tokenize a dataset into shards: `python launch/prepare_data.py data=NAME [data.key=value ...] [--out DIR]`.

Takes the same Hydra overrides as launch/train.py. Without --out the shards go to the cache entry
training would use (`data.cache_dir`), so a later `launch/train.py data=NAME` finds them; with --out
they go to DIR, for `data.shards_dir=DIR` (e.g. on a filesystem every node sees).

python launch/prepare_data.py data=c4_demo
python launch/prepare_data.py data=tinyshakespeare data.prep_workers=8 --out /shared/shards/shakespeare
"""

import dataclasses
import logging
import sys
import time
from pathlib import Path

from llmtrain.config import ConfigError, load_config
from llmtrain.data.errors import DataError
from llmtrain.data.prepare import ensure_shards, prepare_shards
from llmtrain.data.shards import read_manifest


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
    try:
        data = load_config(overrides).data
        if data.kind == "sft":  # examples + loss masks (llmtrain.data.sft_prepare), not shards
            if out:
                data = dataclasses.replace(data, shards_dir=str(out))
            sft_dir = ensure_shards(data)
            print(f"sft examples: {sft_dir}\n  {read_manifest(sft_dir)['audit']['summary']}")
            sys.exit(0)
        started = time.perf_counter()
        shards_dir = prepare_shards(data, out, workers=data.prep_workers) if out else ensure_shards(data)
        seconds = time.perf_counter() - started
        manifest = read_manifest(shards_dir)
    except (ConfigError, DataError) as exc:
        sys.exit(f"error: {exc}")
    splits = manifest["splits"]
    tokens = sum(s["num_tokens"] for s in splits.values())
    print(f"shards: {shards_dir}")
    for name, split in splits.items():
        print(
            f"  {name}: {split['num_docs']:,} docs, {split['num_tokens']:,} tokens, {len(split['shards'])} shards"
        )
    print(f"  empty documents skipped: {manifest['empty_docs']['count']:,}")
    print(
        f"  prepared at {tokens / max(manifest['prep_seconds'], 1e-9):,.0f} tokens/s; this call took {seconds:.1f}s"
    )
