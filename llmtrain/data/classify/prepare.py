"""Labelled rows → tokenized examples with class ids on disk: the label set, a stratified split,
cached like the other pipelines' prepared folders.

Layout (`check_manifest` and the loop's log read the manifest like the other kinds'):

    manifest.json      kind=classify, tokenizer identity, dtype, labels (id order), split sizes and
                       class counts, how many texts were truncated, the settings
    train/tokens.bin   every example's ids ([bos] text [eos pair] eos), concatenated
    train/offsets.npy  int64 start of each example, plus the total at the end
    train/labels.npy   int64 class id of each example
    train/rows.jsonl   text, text pair, label and source line of each example (predictions, baselines)
    val/... test/...

The label set is the training split's, in numeric order when every label is an integer, else
sorted; validation and test labels must be in it. Without `data.val_path` / `data.test_path` the
held-out splits are drawn with scikit-learn's stratified `train_test_split` (seed
`data.split_seed`), so each class keeps its share in every split.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from llmtrain.config import DataConfig
from llmtrain.data.cache import FORMAT_VERSION, MANIFEST, publish, read_manifest, shard_dtype
from llmtrain.data.classify.records import Fields, LabelledRow, read_rows
from llmtrain.data.classify.synthetic import GENERATOR_VERSION, generate_examples
from llmtrain.data.errors import DataError
from llmtrain.data.pretrain.sources import file_sha256
from llmtrain.data.tokenizer.load import load_tokenizer, tokenizer_identity

log = logging.getLogger("llmtrain")

CLASSIFY_SPLITS = ("train", "val", "test")
CLASSIFY_LAYOUT_VERSION = 1


def source_files(cfg: DataConfig) -> dict[str, Path]:
    """The files behind each configured source: `path` (all rows), `val_path`, `test_path`."""
    keys = {"path": cfg.path, "val_path": cfg.val_path, "test_path": cfg.test_path}
    return {k: Path(v).expanduser() for k, v in keys.items() if v is not None}


def classify_cache_key(cfg: DataConfig, tokenizer: Any) -> str:
    sources = {} if cfg.format == "synthetic" else source_files(cfg)
    missing = [f"data.{k}={p}" for k, p in sources.items() if not p.is_file()]
    if missing:
        raise DataError(f"{missing[0]} does not exist (relative to the working directory {Path.cwd()})")
    ident = tokenizer_identity(tokenizer)
    payload = {
        "format_version": FORMAT_VERSION,
        "layout": CLASSIFY_LAYOUT_VERSION,
        "sources": {k: file_sha256(p) for k, p in sources.items()},
        "tokenizer": [ident["vocab_size"], ident["fingerprint"]],
        "settings": classify_settings(cfg),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def classify_settings(cfg: DataConfig) -> dict[str, Any]:
    return {
        "text_field": cfg.text_field,
        "label_field": cfg.label_field,
        "text_pair_field": cfg.text_pair_field,
        "seq_len": cfg.seq_len,
        "val_fraction": cfg.val_fraction,
        "test_fraction": cfg.test_fraction,
        "split_seed": cfg.split_seed,
        "on_empty_text": cfg.on_empty_text,
        "synthetic": [cfg.synthetic_labelled_rows, GENERATOR_VERSION] if cfg.format == "synthetic" else None,
    }


def ensure_classify_cache(cfg: DataConfig) -> Path:
    """The prepared folder for `cfg` (`data.shards_dir`, or the cache entry, built if missing)."""
    tokenizer = load_tokenizer(cfg.tokenizer)
    if cfg.shards_dir is not None:
        out = Path(cfg.shards_dir)
    else:
        out = Path(cfg.cache_dir) / f"{cfg.name}-classify-{classify_cache_key(cfg, tokenizer)[:12]}"
    if (out / MANIFEST).is_file():
        log.info("classify data (cached in %s): %s", out, read_manifest(out)["summary"])
        return out
    log.info("preparing classify data=%s into %s", cfg.name, out)
    return prepare_classify(cfg, tokenizer, out)


def split_rows(cfg: DataConfig, skipped: list[str] | None = None) -> dict[str, list[LabelledRow]]:
    """train / val / test rows: from their own files, or a seeded stratified split of `data.path`.
    Rows with an empty text are named in `skipped` under `data.on_empty_text=skip`."""
    if cfg.on_empty_text == "error":
        skipped = None
    if cfg.format == "synthetic":
        rows = [
            LabelledRow(text, None, label, f"synthetic row {i}")
            for i, (text, label) in enumerate(generate_examples(cfg.synthetic_labelled_rows))
        ]
    else:
        assert cfg.path is not None
        rows = read_rows(Path(cfg.path), _fields(cfg), skipped)
    fixed = {
        split: read_rows(Path(path), _fields(cfg), skipped)
        for split, path in (("val", cfg.val_path), ("test", cfg.test_path))
        if path is not None
    }
    shares = {"test": cfg.test_fraction, "val": cfg.val_fraction}
    total = len(rows)  # fractions are of data.path's rows
    splits: dict[str, list[LabelledRow]] = {}
    for split in ("test", "val"):
        if split in fixed:
            splits[split] = fixed[split]
            continue
        n_held = round(shares[split] * total)
        rows, splits[split] = _stratified(rows, n_held, cfg.split_seed, split)
    return {"train": rows, "val": splits["val"], "test": splits["test"]}


def _stratified(rows: list[LabelledRow], n_held: int, seed: int, split: str):
    if n_held == 0:
        return rows, []
    from sklearn.model_selection import train_test_split

    labels = [r.label for r in rows]
    counts = Counter(labels)
    rare = sorted(label for label, n in counts.items() if n < 2)
    if rare:
        where = next(r.where for r in rows if r.label == rare[0])
        raise DataError(
            f"label {rare[0]!r} has a single example ({where}): a stratified {split} split needs at least "
            f"two per class; add examples, drop the row, or give data.{split}_path"
        )
    try:
        keep, held = train_test_split(rows, test_size=n_held, stratify=labels, random_state=seed)
    except ValueError as exc:  # e.g. fewer held-out rows than classes
        raise DataError(
            f"cannot draw a stratified {split} split of {n_held} rows over {len(counts)} classes ({exc}); "
            f"raise data.{split}_fraction or give data.{split}_path"
        ) from exc
    return keep, held


def _fields(cfg: DataConfig) -> Fields:
    return Fields(cfg.text_field, cfg.label_field, cfg.text_pair_field)


def label_order(labels: set[str]) -> list[str]:
    """Numeric order when every label is an integer ("0" < "1" < "10"), else sorted text."""
    if all(_is_int(x) for x in labels):
        return sorted(labels, key=int)
    return sorted(labels)


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def check_label_sets(splits: dict[str, list[LabelledRow]], label_field: str) -> list[str]:
    """The label names (id order), after checking the training set has two or more classes and the
    held-out splits hold no label the model would not know."""
    train = splits["train"]
    names = label_order({r.label for r in train})
    if len(names) < 2:
        first = train[0].where.rsplit(" ", 2)[0]
        raise DataError(
            f"{first}: the training set has a single class ({names[0]!r} in field {label_field!r}, "
            f"data.label_field); a classifier needs two or more"
        )
    known = set(names)
    for split in ("val", "test"):
        for row in splits[split]:
            if row.label not in known:
                raise DataError(
                    f"{row.where}: {split} label {row.label!r} (field {label_field!r}) does not occur in "
                    f"the training set, whose labels are {names}"
                )
    return names


def encode(tokenizer: Any, text: str, pair: str | None, seq_len: int) -> tuple[list[int], bool]:
    """[bos] text [eos pair] eos, cut to `seq_len` (the text loses its end, the final eos stays: the
    classifier reads the last token's state). Returns (ids, whether it was cut)."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id]
    ids = bos + tokenizer.encode(text, add_special_tokens=False)
    if pair is not None:
        ids += eos + tokenizer.encode(pair, add_special_tokens=False)
    cut = len(ids) + 1 > seq_len
    return ids[: seq_len - 1] + eos, cut


def prepare_classify(cfg: DataConfig, tokenizer: Any, out_dir: Path) -> Path:
    """Read, split, check, tokenize and write `out_dir` (atomically); returns it."""
    skipped: list[str] = []
    splits = split_rows(cfg, skipped)
    names = check_label_sets(splits, cfg.label_field)
    label_id = {name: i for i, name in enumerate(names)}
    identity = tokenizer_identity(tokenizer)
    dtype = shard_dtype(identity["vocab_size"])
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    stats: dict[str, dict[str, Any]] = {}
    try:
        for split, rows in splits.items():
            stats[split] = _write_split(tmp / split, rows, tokenizer, cfg.seq_len, label_id, dtype)
            stats[split]["class_counts"] = {n: c for n, c in Counter(r.label for r in rows).items()}
        cut = sum(s["truncated"] for s in stats.values())
        summary = ", ".join(f"{s} {stats[s]['num_docs']}" for s in CLASSIFY_SPLITS) + (
            f" examples, {len(names)} classes, {cut} texts cut to seq_len={cfg.seq_len}, "
            f"{len(skipped)} empty texts skipped"
        )
        manifest = {
            "format_version": FORMAT_VERSION,
            "kind": "classify",
            "tokenizer": identity,
            "dtype": dtype.name,
            "labels": names,
            "splits": stats,
            "summary": summary,
            "settings": classify_settings(cfg),
            "sources": {k: str(p) for k, p in source_files(cfg).items()},
            "skipped_empty_text": skipped,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
        for reason in skipped[:5]:
            log.warning("classify data: skipped %s", reason)
        if cut:
            log.warning("classify data: %d texts longer than data.seq_len=%d were cut", cut, cfg.seq_len)
        log.info("classify data: %s", summary)
        return publish(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _write_split(
    folder: Path, rows: list[LabelledRow], tokenizer: Any, seq_len: int, label_id: dict[str, int], dtype
) -> dict[str, Any]:
    folder.mkdir(parents=True)
    offsets, tokens, truncated = [0], [], 0
    with (folder / "rows.jsonl").open("w", encoding="utf-8") as f:
        for row in rows:
            ids, cut = encode(tokenizer, row.text, row.text_pair, seq_len)
            truncated += cut
            tokens.extend(ids)
            offsets.append(len(tokens))
            record = {"text": row.text, "text_pair": row.text_pair, "label": row.label, "where": row.where}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    np.asarray(tokens, dtype=dtype).tofile(folder / "tokens.bin")
    np.save(folder / "offsets.npy", np.asarray(offsets, dtype=np.int64))
    np.save(folder / "labels.npy", np.asarray([label_id[r.label] for r in rows], dtype=np.int64))
    return {"num_docs": len(rows), "num_tokens": len(tokens), "truncated": truncated}


def describe_classify(folder: Path) -> str:
    manifest = read_manifest(folder)
    return f"classification examples: {folder}\n  {manifest['summary']}\n  labels: {manifest['labels']}"


# Beside the run's tokenizer (exports copy it): how `launch/evaluate.py` reads and encodes new files.
CLASSIFY_SETTINGS_FILE = "llmtrain_classify.json"


def save_classify_settings(folder: Path, cfg: DataConfig) -> None:
    payload = {
        "text_field": cfg.text_field,
        "label_field": cfg.label_field,
        "text_pair_field": cfg.text_pair_field,
        "seq_len": cfg.seq_len,
    }
    (Path(folder) / CLASSIFY_SETTINGS_FILE).write_text(json.dumps(payload, indent=2) + "\n")


def load_classify_settings(folder: Path) -> dict[str, Any] | None:
    path = Path(folder) / CLASSIFY_SETTINGS_FILE
    return json.loads(path.read_text()) if path.is_file() else None
