"""Offline evaluation of a classifier (`launch/evaluate.py`): a run's latest checkpoint or an
exported folder, on a labelled file or on one split of the run's own data.

A run directory (or step folder) is first exported with the export code (`export_hf`, into a
temporary folder), so there is one way a checkpoint becomes a model. Rows are read and encoded
exactly as in training (`llmtrain.data.classify`: the fields and seq_len saved beside the run's
tokenizer), predicted in one process, scored with scikit-learn, and written out:

    predictions.jsonl   text, gold, predicted, probabilities (label -> p) per row, in file order
    metrics.json        accuracy, macro/weighted precision/recall/F1, per class, the confusion matrix
    confusion.png       the confusion matrix (matplotlib, Agg)
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llmtrain.checkpoint.export import export_hf
from llmtrain.config import from_yaml
from llmtrain.data import ensure_prepared
from llmtrain.data.classify.dataset import ClassifyExamples
from llmtrain.data.classify.prepare import encode, load_classify_settings
from llmtrain.data.classify.records import Fields, LabelledRow, read_rows
from llmtrain.data.errors import DataError
from llmtrain.data.tokenizer.load import load_tokenizer
from llmtrain.metrics.classification import classification_metrics, confusion, metrics_table, with_support

log = logging.getLogger("llmtrain")


@dataclass
class Evaluation:
    metrics: dict[str, float]
    table: str
    out_dir: Path


def load_classifier(model_dir: Path, device: torch.device) -> Any:
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(model_dir, local_files_only=True)
    return model.to(device).eval()


@torch.no_grad()
def predict(model: Any, ids: list[list[int]], pad_id: int, batch_size: int = 32) -> torch.Tensor:
    """Softmax probabilities [rows, classes] (rows right-padded, as in training)."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(ids), batch_size):
        chunk = ids[start : start + batch_size]
        batch = torch.full((len(chunk), max(map(len, chunk))), pad_id, dtype=torch.long)
        for row, seq in enumerate(chunk):
            batch[row, : len(seq)] = torch.tensor(seq)
        logits = model(input_ids=batch.to(device), use_cache=False).logits.float()
        out.append(torch.softmax(logits, dim=-1).cpu())
    return torch.cat(out)


def evaluate_classifier(
    source: Path, data: Path | None, split: str, out_dir: Path | None, device: str = "cpu"
) -> Evaluation:
    """Predict and score `data` (a labelled file, or a prepared folder's `split`; None: the run's
    own `split`) with the classifier in `source` (export folder, run directory or step folder)."""
    source = Path(source)
    with tempfile.TemporaryDirectory(prefix="llmtrain-eval-") as tmp:
        model_dir = source if (source / "config.json").is_file() else export_hf(source, Path(tmp) / "model")
        model = load_classifier(model_dir, torch.device(device))
        names = [model.config.id2label[i] for i in range(model.config.num_labels)]
        tokenizer = load_tokenizer(str(model_dir))
        settings = load_classify_settings(model_dir)
        rows = _rows(source, data, split, settings)
        label_id = {name: i for i, name in enumerate(names)}
        for row in rows:
            if row.label not in label_id:
                raise DataError(
                    f"{row.where}: label {row.label!r} is not one of the model's labels {names} "
                    "(config.json id2label)"
                )
        seq_len = settings["seq_len"] if settings else model.config.max_position_embeddings
        ids = [encode(tokenizer, r.text, r.text_pair, seq_len)[0] for r in rows]
        probs = predict(model, ids, model.config.pad_token_id)
    gold = [label_id[r.label] for r in rows]
    pred = probs.argmax(-1).tolist()
    metrics = classification_metrics(gold, pred, names, prefix="")
    table = metrics_table(with_support(metrics, gold, names, prefix=""), names, prefix="")
    out_dir = Path(out_dir) if out_dir is not None else _default_out(source, data, split)
    _write(out_dir, rows, gold, pred, probs, names, metrics)
    return Evaluation(metrics, table, out_dir)


def _rows(source: Path, data: Path | None, split: str, settings: dict | None) -> list[LabelledRow]:
    if data is not None and (Path(data) / "manifest.json").is_file():
        return _prepared_rows(Path(data), split)
    if data is not None:
        if settings is None:
            raise DataError(
                f"{source} has no llmtrain_classify.json (text/label fields); export it from a classify run"
            )
        fields = Fields(settings["text_field"], settings["label_field"], settings["text_pair_field"])
        skipped: list[str] = []
        rows = read_rows(Path(data), fields, skipped)
        for reason in skipped:
            log.warning("not evaluated: %s", reason)
        return rows
    config = _run_config(source)
    if config is None:
        raise DataError(f"{source} is an exported folder: give the file to evaluate with --data FILE")
    return _prepared_rows(ensure_prepared(from_yaml(config).data), split)


def _run_config(source: Path) -> Path | None:
    for candidate in (source / "config.yaml", source.parent.parent / "config.yaml"):
        if candidate.is_file():
            return candidate
    return None


def _prepared_rows(folder: Path, split: str) -> list[LabelledRow]:
    examples = ClassifyExamples(folder, split)
    return [LabelledRow(r["text"], r["text_pair"], r["label"], r["where"]) for r in examples.rows()]


def _default_out(source: Path, data: Path | None, split: str) -> Path:
    name = Path(data).stem if data is not None and not (Path(data) / "manifest.json").is_file() else split
    return source / "eval" / name


def _write(out_dir, rows, gold, pred, probs, names, metrics) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "predictions.jsonl").open("w", encoding="utf-8") as f:
        for row, g, p, pr in zip(rows, gold, pred, probs.tolist()):
            record = {
                "text": row.text,
                **({"text_pair": row.text_pair} if row.text_pair is not None else {}),
                "gold": names[g],
                "predicted": names[p],
                "probabilities": dict(zip(names, pr)),
                "where": row.where,
            }
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    matrix = confusion(gold, pred, len(names))
    payload = {**metrics, "num_examples": len(rows), "labels": names, "confusion": matrix}
    (out_dir / "metrics.json").write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    plot_confusion(matrix, names, out_dir / "confusion.png")


def plot_confusion(matrix: list[list[int]], names: list[str], path: Path) -> None:
    try:
        import matplotlib
    except ImportError as exc:
        raise DataError("the confusion-matrix PNG needs matplotlib: pip install 'llmtrain[plot]'") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import font_manager

    # Chinese label names need a CJK font; without one matplotlib draws boxes (and warns), so fall
    # back to class ids on the axes and keep the names in metrics.json.
    has_cjk = any(ord(ch) > 0x2E80 for n in names for ch in n)
    cjk_fonts = [f.name for f in font_manager.fontManager.ttflist if "CJK" in f.name or "Hei" in f.name]
    ticks = names if not has_cjk or cjk_fonts else [str(i) for i in range(len(names))]
    if has_cjk and cjk_fonts:
        plt.rcParams["font.family"] = cjk_fonts[0]
    size = max(4.0, 0.6 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(names)), ticks, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), ticks)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    peak = max(max(r) for r in matrix) or 1
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            ax.text(
                j, i, str(value), ha="center", va="center", color="white" if value > peak / 2 else "black"
            )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
