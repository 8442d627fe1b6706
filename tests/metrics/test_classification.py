"""Classification metrics are scikit-learn's, over the full label set, and the table shows them."""

from __future__ import annotations

import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_score, recall_score

from llmtrain.metrics.classification import classification_metrics, confusion, metrics_table, with_support

GOLD = [0, 0, 1, 1, 1, 2, 2, 2, 2, 0]
PRED = [0, 1, 1, 1, 0, 2, 2, 1, 2, 0]
NAMES = ["neg", "neu", "pos"]


def test_metrics_equal_sklearn_per_class_macro_and_weighted():
    m = classification_metrics(GOLD, PRED, NAMES)
    assert m["val_accuracy"] == accuracy_score(GOLD, PRED)
    for avg in ("macro", "weighted"):
        assert m[f"val_{avg}_f1"] == pytest.approx(f1_score(GOLD, PRED, average=avg))
        assert m[f"val_{avg}_precision"] == pytest.approx(precision_score(GOLD, PRED, average=avg))
        assert m[f"val_{avg}_recall"] == pytest.approx(recall_score(GOLD, PRED, average=avg))
    per_class = f1_score(GOLD, PRED, average=None)
    assert [m[f"val_f1/{n}"] for n in NAMES] == pytest.approx(per_class.tolist())
    assert confusion(GOLD, PRED, 3) == confusion_matrix(GOLD, PRED).tolist()


def test_a_class_never_predicted_counts_as_zero_in_the_macro_average():
    gold, pred = [0, 1, 2, 2], [0, 1, 1, 1]
    m = classification_metrics(gold, pred, NAMES, prefix="test_")
    assert m["test_f1/pos"] == 0.0
    assert m["test_macro_f1"] == pytest.approx((1 + 0.5 + 0) / 3)
    # Classes absent from both gold and predictions still get a row (labels=range(n)).
    m4 = classification_metrics(gold, pred, [*NAMES, "extra"], prefix="")
    assert m4["f1/extra"] == 0.0 and m4["macro_f1"] == pytest.approx((1 + 0.5) / 4)


def test_table_lists_every_class_with_support_and_the_averages():
    m = with_support(classification_metrics(GOLD, PRED, NAMES), GOLD, NAMES)
    table = metrics_table(m, NAMES)
    lines = table.splitlines()
    assert lines[0].split() == ["class", "precision", "recall", "f1", "support"]
    assert [line.split()[0] for line in lines[1:4]] == NAMES
    assert lines[3].split()[-1] == "4"  # pos support
    assert "macro avg" in table and f"{m['val_accuracy']:.4f}" in lines[-1]
