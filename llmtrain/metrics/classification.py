"""Classification metrics from scikit-learn: accuracy, precision / recall / F1 per class and
macro- and weighted-averaged, the confusion matrix, and a readable table of them.

Every number comes from `sklearn.metrics` over the full label set (`labels=range(n)`), so a class
absent from the predictions still counts in the macro average (as 0 F1, `zero_division=0`).
"""

from __future__ import annotations

from collections.abc import Sequence


def classification_metrics(
    gold: Sequence[int], pred: Sequence[int], label_names: Sequence[str], prefix: str = "val_"
) -> dict[str, float]:
    """`{prefix}accuracy`, `{prefix}macro_precision/recall/f1`, `{prefix}weighted_...`, and per class
    `{prefix}f1/<label>`, `{prefix}precision/<label>`, `{prefix}recall/<label>`."""
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    labels = list(range(len(label_names)))
    out = {f"{prefix}accuracy": float(accuracy_score(gold, pred))}
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(
            gold, pred, labels=labels, average=average, zero_division=0
        )
        out[f"{prefix}{average}_precision"] = float(p)
        out[f"{prefix}{average}_recall"] = float(r)
        out[f"{prefix}{average}_f1"] = float(f)
    p, r, f, _ = precision_recall_fscore_support(gold, pred, labels=labels, average=None, zero_division=0)
    for i, name in enumerate(label_names):
        out[f"{prefix}precision/{name}"] = float(p[i])
        out[f"{prefix}recall/{name}"] = float(r[i])
        out[f"{prefix}f1/{name}"] = float(f[i])
    return out


def confusion(gold: Sequence[int], pred: Sequence[int], n_labels: int) -> list[list[int]]:
    """Rows: gold class, columns: predicted class (sklearn's convention)."""
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(gold, pred, labels=list(range(n_labels))).tolist()


def metrics_table(metrics: dict, label_names: Sequence[str], prefix: str | None = None) -> str:
    """Per-class precision / recall / F1 / support and the averages, as aligned text.

    `prefix` is found from the `...accuracy` key when not given. Support is read from
    `{prefix}support/<label>` when present (`classification_metrics` leaves it out: it is a count,
    not a score; `with_support` adds it).
    """
    if prefix is None:
        prefix = next(k[: -len("accuracy")] for k in metrics if k.endswith("accuracy"))
    width = max([len(n) for n in label_names] + [12])
    lines = [f"{'class':<{width}}  precision  recall     f1  support"]
    for name in label_names:
        support = metrics.get(f"{prefix}support/{name}")
        lines.append(
            f"{name:<{width}}  {metrics[f'{prefix}precision/{name}']:9.4f}  "
            f"{metrics[f'{prefix}recall/{name}']:6.4f}  {metrics[f'{prefix}f1/{name}']:.4f}  "
            f"{'' if support is None else int(support):>7}"
        )
    for average in ("macro", "weighted"):
        lines.append(
            f"{average + ' avg':<{width}}  {metrics[f'{prefix}{average}_precision']:9.4f}  "
            f"{metrics[f'{prefix}{average}_recall']:6.4f}  {metrics[f'{prefix}{average}_f1']:.4f}"
        )
    lines.append(f"{'accuracy':<{width}}  {metrics[f'{prefix}accuracy']:.4f}")
    return "\n".join(lines)


def with_support(
    metrics: dict[str, float], gold: Sequence[int], label_names: Sequence[str], prefix: str = "val_"
) -> dict[str, float]:
    """`metrics` plus `{prefix}support/<label>`: how many gold examples each class has."""
    counts = [0] * len(label_names)
    for g in gold:
        counts[g] += 1
    return {**metrics, **{f"{prefix}support/{n}": float(c) for n, c in zip(label_names, counts)}}
