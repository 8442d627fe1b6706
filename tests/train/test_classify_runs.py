"""Classification end to end through `launch/train.py`: the logged validation metrics are
sklearn's on the predictions `launch/evaluate.py` writes, exports (full and LoRA, merged) reload in
`AutoModelForSequenceClassification` with the trained probabilities, two-rank FSDP and ZeRO-3
reproduce the one-process run, and an unknown label in an evaluated file is exit 2 naming it.

Runs are real processes, shared between assertions through module fixtures.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from launcher import REPO, launch, read_metrics, step_losses

from llmtrain.checkpoint import layout
from llmtrain.checkpoint.export import export_hf
from llmtrain.config import from_yaml
from llmtrain.data.classify.dataset import ClassifyExamples
from llmtrain.model.build import build_model
from llmtrain.strategy.single import SingleStrategy

pytestmark = pytest.mark.slow

EVALUATE = REPO / "launch" / "evaluate.py"
STEPS = 6
# 410 generated rows: 41 validation rows, an odd count, so two ranks' shares need the padding.
ARGS = [
    "+exp=classify",
    f"trainer.max_steps={STEPS}",
    "trainer.eval_every=3",
    "trainer.log_every=1",
    "trainer.save_every=100",
    "trainer.global_batch_size=8",
    "trainer.micro_batch_size=2",
    "trainer.device=cpu",
    "sched=constant",
    "sched.warmup_steps=2",
    "optim.lr=3e-3",
    "data.synthetic_labelled_rows=410",
    "data.seq_len=64",
    "data.class_weights=auto",
    "data.loader_workers=0",
    "model.hidden_size=64",
    "model.intermediate_size=128",
    "model.num_layers=2",
]
# fp32 on CPU: two ranks differ from one process in the order of float sums only (see
# tests/strategy/test_deepspeed.py); a loss normalised by the wrong example count is off by ~2x.
RTOL = 1e-5
VAL_KEYS = ("val_accuracy", "val_macro_f1", "val_weighted_f1")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """`runs(name, launcher, nproc, *overrides)`: a run directory, launched once per name."""
    tmp = tmp_path_factory.mktemp("classify")
    done: dict[str, Path] = {}

    def run(name: str, launcher: str = "forked", nproc: int = 1, *extra: str) -> Path:
        if name not in done:
            args = [*ARGS, f"run.dir={tmp / name}", f"data.cache_dir={tmp / 'cache'}", *extra]
            launch(launcher, nproc, args, timeout=600)
            done[name] = tmp / name
        return done[name]

    return run


def _evaluate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(EVALUATE), *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )


def _val_rows(run_dir: Path) -> dict[int, dict]:
    return {m["step"]: m for m in read_metrics(run_dir) if "val_accuracy" in m}


def test_logged_val_metrics_equal_sklearn_on_evaluate_predictions(runs, tmp_path):
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

    run_dir = runs("single")
    logged = _val_rows(run_dir)
    assert sorted(logged) == [0, 3, 6]
    proc = _evaluate(str(run_dir), "--split", "val", "--out", str(tmp_path / "eval"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    preds = [json.loads(line) for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 41 and all(abs(sum(p["probabilities"].values()) - 1) < 1e-5 for p in preds)
    gold, pred = [p["gold"] for p in preds], [p["predicted"] for p in preds]
    final = logged[STEPS]
    assert final["val_accuracy"] == pytest.approx(accuracy_score(gold, pred))
    for avg in ("macro", "weighted"):
        assert final[f"val_{avg}_f1"] == pytest.approx(f1_score(gold, pred, average=avg, zero_division=0))
        assert final[f"val_{avg}_precision"] == pytest.approx(
            precision_score(gold, pred, average=avg, zero_division=0)
        )
        assert final[f"val_{avg}_recall"] == pytest.approx(
            recall_score(gold, pred, average=avg, zero_division=0)
        )
    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert written["macro_f1"] == pytest.approx(final["val_macro_f1"])
    assert (tmp_path / "eval" / "confusion.png").stat().st_size > 1000
    assert "macro avg" in proc.stdout
    # The confusion matrix of each evaluation is kept beside the metrics.
    matrices = [json.loads(line) for line in (run_dir / "confusion.jsonl").read_text().splitlines()]
    assert [m["step"] for m in matrices] == [0, 3, 6] and sum(map(sum, matrices[-1]["matrix"])) == 41


def _reference_probs(run_dir: Path, ids: torch.Tensor) -> torch.Tensor:
    """Probabilities of the trained weights in our own model build (not through the export)."""
    ckpt = layout.resolve_checkpoint(run_dir)
    cfg = from_yaml(run_dir / "config.yaml")
    names = json.loads((next(run_dir.glob("checkpoints/step_*/hf_config")) / "config.json").read_text())
    labels = [names["id2label"][str(i)] for i in range(len(names["id2label"]))]
    model = build_model(cfg.model, 259, torch.device("cpu"), labels, names["pad_token_id"])
    model.load_state_dict(SingleStrategy.consolidate(ckpt / layout.MODEL_DIR))
    with torch.no_grad():
        return torch.softmax(model.eval()(input_ids=ids).logits, -1)


@pytest.mark.parametrize("name,extra", [("single", ()), ("lora", ("model.lora.r=4", "model.lora.alpha=8"))])
def test_export_reloads_in_auto_model_for_sequence_classification_with_the_same_probabilities(
    runs, tmp_path, name, extra
):
    from transformers import AutoModelForSequenceClassification

    run_dir = runs(name, "forked", 1, *extra)
    out = export_hf(run_dir, tmp_path / "export")
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "food", "1": "sports", "2": "weather"}
    assert config["architectures"] == ["LlamaForSequenceClassification"]
    cache = next((run_dir.parent / "cache").glob("*classify*"))
    val = ClassifyExamples(cache, "val")
    ids = torch.stack([torch.from_numpy(val.ids(i)[:12]) for i in range(8)])
    exported = AutoModelForSequenceClassification.from_pretrained(out).eval()
    with torch.no_grad():
        got = torch.softmax(exported(input_ids=ids).logits, -1)
    want = _reference_probs(run_dir, ids)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got, torch.full_like(got, 1 / 3), atol=1e-3)  # trained, not uniform
    if name == "lora":
        assert not any("lora" in k for k in json.loads((out / "config.json").read_text()))
        assert (run_dir / "tokenizer" / "llmtrain_classify.json").is_file()


@pytest.mark.parametrize("name,launcher,strategy", [("fsdp", "forked", "fsdp"), ("zero3", "forked", "zero3")])
def test_two_ranks_reproduce_single_losses_and_validation_metrics(runs, name, launcher, strategy):
    ref = step_losses(runs("single"))
    got = step_losses(runs(name, launcher, 2, f"strategy={strategy}"))
    assert sorted(got) == sorted(ref) == list(range(1, STEPS + 1))
    for step in ref:
        assert got[step] == pytest.approx(ref[step], rel=RTOL), step
    ref_val, got_val = _val_rows(runs("single")), _val_rows(runs(name))
    assert sorted(got_val) == sorted(ref_val)
    # (val_loss is not compared: the loss loader leaves out the rows that do not divide over the
    # ranks, 1 of 41 here; the classification metrics below cover every row.)
    for step in ref_val:
        for key in VAL_KEYS:  # every validation row predicted once, whichever rank had it
            assert got_val[step][key] == pytest.approx(ref_val[step][key], abs=1e-9), (step, key)


def test_evaluating_a_file_with_an_unknown_label_exits_2_naming_label_and_line(runs, tmp_path):
    path = tmp_path / "new.jsonl"
    rows = [{"text": "goal match team", "label": "sports"}, {"text": "rain rain", "label": "politics"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = _evaluate(str(runs("single")), "--data", str(path), "--out", str(tmp_path / "e"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"{path} line 2: label 'politics' is not one of the model's labels" in proc.stderr
    assert "Traceback" not in proc.stderr
