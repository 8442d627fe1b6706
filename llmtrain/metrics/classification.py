"""Classification metrics from scikit-learn: accuracy, precision/recall/F1 per class and macro- and
weighted-averaged, the confusion matrix, and a readable table of them."""

from __future__ import annotations

from collections.abc import Sequence


def classification_metrics(
    gold: Sequence[int], pred: Sequence[int], label_names: Sequence[str], prefix: str = "val_"
) -> dict[str, float]:
    """`{prefix}accuracy`, `{prefix}macro_*`, `{prefix}weighted_*` and per class `{prefix}f1/<label>`,
    `precision/<label>`, `recall/<label>`; labels are ids into `label_names` (absent classes score 0)."""
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    labels = list(range(len(label_names)))
    out = {f"{prefix}accuracy": float(accuracy_score(gold, pred))}
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(
            gold, pred, labels=labels, average=average, zero_division=0
        )
        out.update({f"{prefix}{average}_precision": float(p), f"{prefix}{average}_recall": float(r)})
        out[f"{prefix}{average}_f1"] = float(f)
    p, r, f, _ = precision_recall_fscore_support(gold, pred, labels=labels, average=None, zero_division=0)
    for i, name in enumerate(label_names):
        out.update({f"{prefix}f1/{name}": float(f[i]), f"{prefix}precision/{name}": float(p[i])})
        out[f"{prefix}recall/{name}"] = float(r[i])
    return out


def confusion(gold: Sequence[int], pred: Sequence[int], n_labels: int) -> list[list[int]]:
    """Rows: gold label, columns: predicted label."""
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(gold, pred, labels=list(range(n_labels))).tolist()


def metrics_table(metrics: dict[str, float], label_names: Sequence[str], prefix: str = "val_") -> str:
    """Per-class precision/recall/F1 and the averages, one row each."""
    width = max(len("weighted"), *(len(n) for n in label_names))
    lines = [f"{'':<{width}}  precision  recall  f1"]
    for name in label_names:
        p, r, f = (metrics[f"{prefix}{k}/{name}"] for k in ("precision", "recall", "f1"))
        lines.append(f"{name:<{width}}  {p:9.4f}  {r:6.4f}  {f:.4f}")
    for avg in ("macro", "weighted"):
        p, r, f = (metrics[f"{prefix}{avg}_{k}"] for k in ("precision", "recall", "f1"))
        lines.append(f"{avg:<{width}}  {p:9.4f}  {r:6.4f}  {f:.4f}")
    lines.append(f"accuracy {metrics[f'{prefix}accuracy']:.4f}")
    return "\n".join(lines)
