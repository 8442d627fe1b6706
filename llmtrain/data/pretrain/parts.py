"""Preparing one corpus in parts (a SLURM job array, `slurm/prepare.sbatch`), then merging them.

Part `i` of `n` tokenizes a contiguous run of the sorted input files (runs cut at equal shares of
the bytes), with the tokenizer loaded once for the whole task, and writes every document, empty
ones too, to `OUT/parts/part-0000i-of-0000n/docs/` in source order. Which split a document goes
to is a hash of its index in the *whole* corpus, which a part cannot know before the parts before
it are done; so the split is made by the merge: it reads the parts in order, numbers the documents
globally and routes them through the same code as a one-process preparation
(`prepare.write_shards`). The merged `OUT/manifest.json`, `OUT/train/` and `OUT/val/` are
therefore the same shards, byte for byte, as `prepare_shards` of the same files. The merge only
copies tokens (no tokenizer), sequential I/O of the corpus once.

Each part folder is published atomically (complete or absent), so a rerun of the array skips the
parts that finished; a part folder made from other files than the corpus now holds is an error.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from llmtrain.config import DataConfig
from llmtrain.data.cache import FORMAT_VERSION, MANIFEST, read_manifest, shard_dtype
from llmtrain.data.errors import DataError
from llmtrain.data.pretrain.encode import tokenize_documents
from llmtrain.data.pretrain.prepare import _ShardWriter, prep_workers, write_shards
from llmtrain.data.pretrain.sources import (
    _file_fingerprint,
    iter_file_documents,
    resolve_files,
    source_fingerprint,
)
from llmtrain.data.tokenizer.load import load_tokenizer, tokenizer_identity

log = logging.getLogger("llmtrain")

PARTS_DIR = "parts"
_DOCS = "docs"
_EXAMPLES_KEPT = 5


def part_dir(out: Path, part: int, parts: int) -> Path:
    return Path(out) / PARTS_DIR / f"part-{part:05d}-of-{parts:05d}"


def part_files(cfg: DataConfig, part: int, parts: int) -> list[tuple[Path, str]]:
    """The contiguous run of sorted input files that part `part` of `parts` prepares.

    Part k ends at the first file whose cumulative size reaches (k + 1) / parts of the total, so
    parts hold about equal bytes (a part may be empty when there are fewer files than parts).
    """
    _check_part(cfg, part, parts)
    files = resolve_files(cfg)
    sizes = np.cumsum([p.stat().st_size for p, _ in files])
    total = int(sizes[-1]) if len(files) else 0
    # ends[k]: number of files in parts 0..k.
    ends = [int(np.searchsorted(sizes, total * (k + 1) / parts - 0.5, side="left")) + 1 for k in range(parts)]
    ends = [min(e, len(files)) for e in ends]
    ends[-1] = len(files)
    start = ends[part - 1] if part > 0 else 0
    return files[start : max(start, ends[part])]


def prepare_part(cfg: DataConfig, out: Path, part: int, parts: int, workers: int | None = None) -> Path:
    """Tokenize part `part` of `parts` into its folder under `out`; an existing finished one is kept."""
    files = part_files(cfg, part, parts)
    fingerprints = [_file_fingerprint(p) for p, _ in files]
    folder = part_dir(out, part, parts)
    if (folder / MANIFEST).is_file():
        made = read_manifest(folder)
        if [f["sha256"] for f in made["files"]] != [f["sha256"] for f in fingerprints]:
            raise DataError(
                f"{folder} was prepared from other files than data.path={cfg.path} holds now; delete "
                f"{Path(out) / PARTS_DIR} and run every part again"
            )
        log.info("part %d of %d already prepared in %s: skipped", part, parts, folder)
        return folder
    tok = load_tokenizer(cfg.tokenizer)  # once for the task: every file below uses this one
    documents = (
        doc for path, fmt in files for doc in iter_file_documents(path, fmt, cfg.text_field, cfg.text_split)
    )
    writer_root = folder.parent / f".{folder.name}.tmp"
    shutil.rmtree(writer_root, ignore_errors=True)
    writer_root.mkdir(parents=True)
    try:
        dtype = _dtype(tok)
        writer = _ShardWriter(writer_root, _DOCS, dtype, cfg.shard_tokens)
        empty, examples = [], []
        for local, doc, tokens in tokenize_documents(documents, tok, prep_workers(cfg, workers)):
            if len(tokens) == 0:
                # Not written, but counted by position: the merge numbers every document, empty
                # ones included, exactly as a one-process preparation does.
                empty.append(local)
                if len(examples) < _EXAMPLES_KEPT:
                    examples.append(doc.origin)
            else:
                writer.add(tokens)
        manifest = {
            "format_version": FORMAT_VERSION,
            "part": part,
            "parts": parts,
            "tokenizer": tokenizer_identity(tok),
            "dtype": dtype.name,
            "files": fingerprints,
            "splits": {_DOCS: writer.close()},
            "empty_positions": empty,
            "empty_examples": examples,
        }
        (writer_root / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        writer_root.rename(folder)
    finally:
        shutil.rmtree(writer_root, ignore_errors=True)
    log.info(
        "part %d of %d: %d files, %d documents -> %s",
        part,
        parts,
        len(files),
        manifest["splits"][_DOCS]["num_docs"],
        folder,
    )
    return folder


def merge_parts(cfg: DataConfig, out: Path, parts: int) -> Path:
    """Merge the `parts` part folders under `out` into the shard folder `out` (training reads it
    with data.shards_dir=OUT); a finished merge is kept."""
    out = Path(out)
    if (out / MANIFEST).is_file():
        log.info("%s is already merged: kept", out)
        return out
    _check_part(cfg, 0, parts)
    folders = [part_dir(out, k, parts) for k in range(parts)]
    missing = [str(f) for f in folders if not (f / MANIFEST).is_file()]
    if missing:
        raise DataError(
            f"cannot merge {out}: {len(missing)} of {parts} parts are not finished ({', '.join(missing[:4])}"
            f"{', ...' if len(missing) > 4 else ''}); rerun the array (finished parts are skipped)"
        )
    manifests = [read_manifest(f) for f in folders]
    first = manifests[0]["tokenizer"]
    for f, m in zip(folders, manifests):
        if m["tokenizer"]["fingerprint"] != first["fingerprint"]:
            raise DataError(
                f"{f} was tokenized with {m['tokenizer']['name']!r}, part 0 with {first['name']!r}"
            )
    sources = source_fingerprint(cfg)
    made = [f["sha256"] for m in manifests for f in m["files"]]
    if made != [f["sha256"] for f in sources["files"]]:
        raise DataError(
            f"the parts under {out / PARTS_DIR} were prepared from other files than data.path={cfg.path} "
            "holds now (or with another --parts); delete them and run the array again"
        )
    tok = load_tokenizer(cfg.tokenizer)

    def documents(bar: Any) -> Iterator[tuple[int, str, np.ndarray]]:
        index = 0
        for folder, manifest in zip(folders, manifests):
            empty, examples = set(manifest["empty_positions"]), iter(manifest["empty_examples"])
            kept = _part_documents(folder, manifest)
            for local in range(manifest["splits"][_DOCS]["num_docs"] + len(empty)):
                bar.update(1)
                if local in empty:
                    yield index, next(examples, ""), np.empty(0, dtype=np.uint32)
                else:
                    yield index, "", next(kept)
                index += 1

    merged = out.parent / f".{out.name}.merged"
    shutil.rmtree(merged, ignore_errors=True)
    write_shards(cfg, tok, merged, sources, documents, progress=False)
    for split in ("train", "val"):
        shutil.rmtree(out / split, ignore_errors=True)
        (merged / split).rename(out / split)
    # The manifest last: until it is in place, `out` is not a shard folder.
    (merged / MANIFEST).rename(out / MANIFEST)
    shutil.rmtree(merged, ignore_errors=True)
    return out


def _part_documents(folder: Path, manifest: dict[str, Any]) -> Iterator[np.ndarray]:
    """The non-empty documents of a part, in order, shard by shard through memory maps."""
    dtype = np.dtype(manifest["dtype"])
    for shard in manifest["splits"][_DOCS]["shards"]:
        tokens = np.memmap(folder / shard["file"], dtype=dtype, mode="r")
        start = 0
        for end in np.load(folder / shard["index"]):
            yield np.asarray(tokens[start:end], dtype=np.uint32)
            start = int(end)


def _dtype(tok: Any) -> np.dtype:
    return shard_dtype(tokenizer_identity(tok)["vocab_size"])


def _check_part(cfg: DataConfig, part: int, parts: int) -> None:
    if cfg.kind != "pretrain" or cfg.sources or cfg.format in ("synthetic", "hf") or cfg.path is None:
        raise DataError(
            "--part/--parts prepare the files of one pretraining corpus (data.path with format "
            f"text|jsonl|parquet|auto); data={cfg.name} has kind={cfg.kind}, format={cfg.format}"
            + (", data.sources" if cfg.sources else "")
        )
    if not (parts >= 1 and 0 <= part < parts):
        raise DataError(f"--part {part} --parts {parts}: need parts >= 1 and 0 <= part < parts")
