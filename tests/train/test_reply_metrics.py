"""SFT reply metrics end to end in one process: `trainer.eval_generate` logs exact match, BLEU and
ROUGE-L equal to sacrebleu / rouge-score recomputed from the logged generations, and `data.choices`
logs accuracy/precision/recall/F1 equal to scikit-learn on the logged predictions."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import sacrebleu
from rouge_score import rouge_scorer
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

from llmtrain.config import load_config
from llmtrain.data.errors import DataError
from llmtrain.train.loop import train
from llmtrain.train.reply_metrics import CHOICES_KEY, GENERATIONS_KEY

pytestmark = pytest.mark.slow  # end to end: three short training runs

N_GENERATE = 4


def overrides(tmp: Path, run: str, **extra: object) -> list[str]:
    base = {
        "run.dir": tmp / run,
        "data.cache_dir": tmp / "cache",
        "data.sft.synthetic_examples": 200,
        "data.val_fraction": 0.2,
        "data.seq_len": 128,
        "data.loader_workers": 0,
        "model.num_layers": 2,
        "trainer.max_steps": 40,
        "trainer.eval_every": 20,
        "trainer.eval_batches": 1,
        "trainer.global_batch_size": 8,
        "trainer.micro_batch_size": 8,
        "trainer.log_every": 10,
        "trainer.save_every": 100,
        "trainer.sample_prompts": "[]",
        "sched.warmup_steps": 2,
        "optim.lr": 3e-3,
    }
    base.update(extra)
    return ["+exp=sft", *(f"{k}={v}" for k, v in base.items())]


def logged(run_dir: Path) -> tuple[dict[int, dict], list[dict]]:
    """(validation metrics by step, samples.jsonl rows)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows if "val_loss" in r}, samples


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("reply_metrics")


def test_eval_generate_metrics_equal_sacrebleu_and_rouge_score_on_the_logged_generations(workdir):
    run = train(load_config(overrides(workdir, "generate", **{"trainer.eval_generate": N_GENERATE})))
    metrics, samples = logged(run.run_dir)
    assert sorted(metrics) == [0, 20, 40]
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    for step, row in metrics.items():
        gens = [s for s in samples if s["step"] == step and s["key"] == GENERATIONS_KEY]
        assert [g["index"] for g in gens] == list(range(N_GENERATE))
        preds, refs = [g["completion"] for g in gens], [g["reference"] for g in gens]
        assert all(refs) and row["val_bleu"] == pytest.approx(sacrebleu.corpus_bleu(preds, [refs]).score)
        rouge = sum(scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(preds, refs)) / len(refs)
        assert row["val_rouge_l"] == pytest.approx(rouge)
        assert row["val_exact_match"] == sum(p.strip() == r.strip() for p, r in zip(preds, refs)) / len(refs)
    # The references are the examples' answers (the synthetic tasks end sentences or are words).
    assert any(g["reference"].endswith(".") for g in samples)
    # It learns something in 40 steps: the final generations overlap their references.
    assert metrics[40]["val_bleu"] > metrics[0]["val_bleu"]


def parity_data(path: Path, n: int = 240) -> Path:
    """Alpaca rows whose answers are label words: `Is N even or odd?` -> even|odd."""
    rng = random.Random(0)
    rows = []
    for _ in range(n):
        k = rng.randint(0, 999)
        rows.append(
            {"instruction": f"Is {k} even or odd?", "input": "", "output": "odd" if k % 2 else "even"}
        )
    path.write_text(json.dumps(rows))
    return path


def choice_overrides(workdir: Path, run: str, **extra: object) -> list[str]:
    data = parity_data(workdir / "parity.json")
    return overrides(
        workdir,
        run,
        **{
            "data.path": data,
            "data.sft.format": "alpaca",
            "data.choices": "[even,odd]",
            "trainer.eval_batches": 5,
            **extra,
        },
    )


def test_choice_scores_give_the_sklearn_metrics_of_the_logged_predictions(workdir):
    run = train(load_config(choice_overrides(workdir, "choices")))
    metrics, samples = logged(run.run_dir)
    labels = ["even", "odd"]
    for step, row in metrics.items():
        preds = [s for s in samples if s["step"] == step and s["key"] == CHOICES_KEY]
        assert len(preds) == 40, "every validation example up to eval_batches × global_batch_size"
        gold = [labels.index(p["gold"]) for p in preds]
        pred = [labels.index(p["predicted"]) for p in preds]
        # The prediction is the choice with the highest summed log-probability.
        assert all(p["predicted"] == labels[max((0, 1), key=p["scores"].__getitem__)] for p in preds)
        assert row["val_accuracy"] == pytest.approx(accuracy_score(gold, pred))
        assert row["val_macro_f1"] == pytest.approx(f1_score(gold, pred, average="macro", zero_division=0))
        assert row["val_weighted_f1"] == pytest.approx(
            f1_score(gold, pred, average="weighted", zero_division=0)
        )
        p, r, f, _ = precision_recall_fscore_support(gold, pred, labels=[0, 1], zero_division=0)
        for i, name in enumerate(labels):
            assert (row[f"val_precision/{name}"], row[f"val_recall/{name}"], row[f"val_f1/{name}"]) == (
                pytest.approx(p[i]),
                pytest.approx(r[i]),
                pytest.approx(f[i]),
            )
        assert sorted(set(p["gold"] for p in preds)) == labels, "both classes are in the validation set"


def test_a_reply_that_is_not_one_of_the_choices_names_the_example(workdir):
    args = choice_overrides(workdir, "bad_choices", **{"data.choices": "[even,maybe]"})
    with pytest.raises(DataError, match=r"example \d+: reply 'odd' is not one of data.choices"):
        train(load_config(args))


@pytest.fixture(scope="module")
def single_choices(workdir) -> Path:
    """The reference for the sharded runs: one process, the same config."""
    args = choice_overrides(workdir, "choices_single", **DIST)
    return train(load_config(args)).run_dir


DIST = {
    "trainer.max_steps": 10,
    "trainer.eval_every": 5,
    "trainer.micro_batch_size": 4,
    "trainer.eval_generate": 2,
    "trainer.early_stopping.metric": "val_accuracy",
    "trainer.early_stopping.mode": "max",
}


@pytest.mark.parametrize(("launcher", "strategy"), [("forked", "fsdp"), ("forked", "zero3")])
def test_reply_metrics_and_early_stopping_under_sharded_engines_match_one_process_at_the_start(
    workdir, single_choices, launcher, strategy
):
    """Every rank runs each generation and scoring forward (FSDP2 and ZeRO-3 gather weights in
    them: a rank that skipped one would hang the others); at step 0 the weights are the same init,
    so the generations, choice scores and metrics equal one process's."""
    from launcher import launch

    run_dir = workdir / f"choices_{strategy}"
    args = choice_overrides(workdir, run_dir.name, **{**DIST, "strategy": strategy})
    launch(launcher, 2, [str(a) for a in args], timeout=900)
    (ref, ref_samples), (got, got_samples) = logged(single_choices), logged(run_dir)
    for key in ("val_loss", "val_accuracy", "val_macro_f1", "val_bleu", "val_rouge_l", "val_exact_match"):
        assert got[0][key] == pytest.approx(ref[0][key], rel=1e-4, abs=1e-6), key
    at_start = [
        [(s["key"], s.get("completion"), s.get("predicted")) for s in rows if s["step"] == 0]
        for rows in (ref_samples, got_samples)
    ]
    assert at_start[0] == at_start[1] and len(at_start[0]) == 2 + 40
    scores = [
        [s["scores"] for s in rows if s["step"] == 0 and s["key"] == CHOICES_KEY]
        for rows in (ref_samples, got_samples)
    ]
    assert scores[1] == [[pytest.approx(v, rel=1e-4) for v in row] for row in scores[0]]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["best_metric"] == "val_accuracy" and summary["best_step"] is not None
