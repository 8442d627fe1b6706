"""Metrics of generated text against references, from the field's libraries: exact match, corpus
BLEU (sacrebleu, its default 13a tokenization, 0-100) and ROUGE-L (rouge-score, mean F-measure).

Imported lazily by the evaluation that needs them, so `import llmtrain` stays fast.
"""

from __future__ import annotations

from collections.abc import Sequence


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Share of predictions equal to their reference after stripping surrounding whitespace."""
    _check(predictions, references)
    return sum(p.strip() == r.strip() for p, r in zip(predictions, references)) / len(references)


def corpus_bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """sacrebleu's corpus BLEU with one reference per prediction (0-100)."""
    import sacrebleu

    _check(predictions, references)
    return float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score)


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F-measure (rouge-score; its tokenizer keeps lowercase ASCII letters and digits,
    so text in other scripts scores 0: read BLEU or exact match for it)."""
    from rouge_score import rouge_scorer

    _check(predictions, references)
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    return sum(scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)) / len(
        references
    )


def generation_metrics(
    predictions: Sequence[str], references: Sequence[str], prefix: str = "val_"
) -> dict[str, float]:
    return {
        f"{prefix}exact_match": exact_match(predictions, references),
        f"{prefix}bleu": corpus_bleu(predictions, references),
        f"{prefix}rouge_l": rouge_l(predictions, references),
    }


def _check(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references) or not references:
        raise ValueError(
            f"need as many predictions as references, at least one: got {len(predictions)} and {len(references)}"
        )
