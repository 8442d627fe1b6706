"""`launch/bench.py --classify`: our classifier against `transformers.Trainer` on the same work,
and a TF-IDF + logistic-regression baseline, all scored on the same held-out test split.

Like for like: the Trainer gets the same model (built by the same function from the same seed, so
the same initial weights), the same optimizer and LR schedule (ours, passed in as `optimizers`),
the same global batch and steps, and the same samples in the same order (our global-batch
sampler's order for every step, fed through a sequential sampler). So the two runs differ only in
their training loops; their test macro-F1 must agree within 0.02. Throughput is real (non-padding)
tokens per second of training, evaluation excluded.

The baseline is what a reader can get without a neural network: character 1-3-grams (they suit
Chinese, which has no spaces) weighted by TF-IDF, and scikit-learn's LogisticRegression.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from llmtrain.bench.hf_trainer import _SlotCounter
from llmtrain.config import TrainConfig
from llmtrain.data.classify.dataset import ClassifyExamples, HFClassifyExamples
from llmtrain.data.sampler import GlobalBatchSampler
from llmtrain.metrics.classification import classification_metrics
from llmtrain.model.build import build_model
from llmtrain.optim.adamw import build_optimizer
from llmtrain.optim.schedule import LRSchedule
from llmtrain.tracking.console import setup_logging
from llmtrain.train.loop import train
from llmtrain.train.predict import load_classifier, predict
from llmtrain.train.setup import RunData, prepare_data

log = logging.getLogger("llmtrain")


@dataclass
class ClassifyResult:
    name: str
    test_macro_f1: float
    test_accuracy: float
    tokens_per_sec: float | None
    train_seconds: float | None

    def to_dict(self) -> dict[str, Any]:
        return vars(self)


def _test_scores(probs: torch.Tensor, test: ClassifyExamples) -> tuple[float, float]:
    gold = [int(x) for x in test.labels]
    m = classification_metrics(gold, probs.argmax(-1).tolist(), test.label_names, prefix="")
    return m["macro_f1"], m["accuracy"]


def _test_ids(test: ClassifyExamples) -> list[list[int]]:
    return [test.ids(i).tolist() for i in range(len(test))]


def bench_ours(cfg: TrainConfig, data: RunData, out: Path) -> ClassifyResult:
    """Train with the loop itself (launch/train.py's `train`), then predict the test split."""
    cfg = replace(cfg, run=replace(cfg.run, dir=str(out / "ours")))
    result = train(cfg)
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "tokens_per_sec" in r]
    # Intervals after the first (which holds start-up and the first step's warm-up).
    tokens = logged[-1]["tokens"] - logged[0]["tokens"]
    seconds = sum(r["step_time"] * (r["step"] - p["step"]) for p, r in zip(logged, logged[1:]))
    from llmtrain.checkpoint.export import export_hf

    model = load_classifier(export_hf(result.run_dir, out / "ours_export"), torch.device("cpu"))
    test = ClassifyExamples(data.shards_dir, "test")
    f1, acc = _test_scores(predict(model, _test_ids(test), test.pad_id), test)
    return ClassifyResult("llmtrain", f1, acc, tokens / seconds, seconds)


class _OurOrder(torch.utils.data.Sampler):
    """Every step's global batch in our sampler's order, one after another."""

    def __init__(self, sampler: GlobalBatchSampler, steps: int) -> None:
        self.order = [int(i) for s in range(steps) for i in sampler.global_batch(s)]

    def __iter__(self):
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


def bench_trainer(cfg: TrainConfig, data: RunData, out: Path) -> ClassifyResult:
    from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments

    device = torch.device("cpu")
    torch.manual_seed(cfg.trainer.seed)
    model = build_model(cfg.model, len(data.tokenizer), device, data.label_names, data.tokenizer.pad_token_id)
    train_set = ClassifyExamples(data.shards_dir, "train")
    steps, batch = cfg.trainer.max_steps, cfg.trainer.global_batch_size
    order = _OurOrder(GlobalBatchSampler(len(train_set), batch, batch, 0, 1, cfg.trainer.seed), steps)
    optimizer = build_optimizer(cfg.optim, model, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, LRSchedule(cfg.sched, steps).lr_lambda())
    counter = _SlotCounter(DataCollatorWithPadding(data.tokenizer, padding="longest"))

    class Clock(TrainerCallback):
        """Real tokens and seconds of the steps after the first (as for ours)."""

        start = tokens_at_start = 0.0

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 1:
                self.start, self.tokens_at_start = time.perf_counter(), counter.real

    class OrderedTrainer(Trainer):
        def _get_train_sampler(self, train_dataset=None):
            return order

    clock = Clock()
    args = TrainingArguments(
        output_dir=str(out / "trainer"),
        per_device_train_batch_size=cfg.trainer.micro_batch_for(1),
        gradient_accumulation_steps=cfg.trainer.grad_accum_for(1),
        max_steps=steps,
        max_grad_norm=cfg.trainer.grad_clip,
        logging_steps=cfg.trainer.log_every,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
        use_cpu=True,
        seed=cfg.trainer.seed,
    )
    trainer = OrderedTrainer(
        model=model,
        args=args,
        train_dataset=HFClassifyExamples(train_set),
        data_collator=counter,
        optimizers=(optimizer, scheduler),
        callbacks=[clock],
    )
    trainer.train()
    seconds = time.perf_counter() - clock.start
    # The collator runs one batch ahead: the last batch it padded was the last step's.
    tokens = counter.real - clock.tokens_at_start
    test = ClassifyExamples(data.shards_dir, "test")
    f1, acc = _test_scores(predict(model.eval(), _test_ids(test), test.pad_id), test)
    return ClassifyResult("transformers.Trainer", f1, acc, tokens / seconds, seconds)


def bench_tfidf(data: RunData) -> ClassifyResult:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    train_rows = ClassifyExamples(data.shards_dir, "train").rows()
    test = ClassifyExamples(data.shards_dir, "test")
    vectorizer = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), min_df=2, sublinear_tf=True)
    x_train = vectorizer.fit_transform([r["text"] for r in train_rows])
    names = test.label_names
    y_train = [names.index(r["label"]) for r in train_rows]
    start = time.perf_counter()
    clf = LogisticRegression(max_iter=2000, C=10.0).fit(x_train, y_train)
    seconds = time.perf_counter() - start
    pred = clf.predict(vectorizer.transform([r["text"] for r in test.rows()]))
    probs = torch.nn.functional.one_hot(torch.tensor(pred), len(names)).float()
    f1, acc = _test_scores(probs, test)
    return ClassifyResult("tf-idf char 1-3 + logreg", f1, acc, None, seconds)


def table(results: list[ClassifyResult], cfg: TrainConfig, data: RunData) -> str:
    sizes = {s: data.manifest["splits"][s]["num_docs"] for s in ("train", "val", "test")}
    ours = results[0]
    lines = [
        f"data={cfg.data.name} ({len(data.label_names or [])} classes, split {sizes}), model={cfg.model.name}, "
        f"steps={cfg.trainer.max_steps}, global batch={cfg.trainer.global_batch_size}, seq_len={cfg.data.seq_len}",
        f"{'':28}{'test macro-F1':>14}{'accuracy':>10}{'tokens/s':>10}{'ours/it':>9}",
    ]
    for r in results:
        ratio = f"{ours.tokens_per_sec / r.tokens_per_sec:.2f}" if r.tokens_per_sec and r is not ours else ""
        tps = f"{r.tokens_per_sec:,.0f}" if r.tokens_per_sec else "-"
        lines.append(f"{r.name:<28}{r.test_macro_f1:>14.4f}{r.test_accuracy:>10.4f}{tps:>10}{ratio:>9}")
    return "\n".join(lines)


def run_classify_comparison(cfg: TrainConfig, json_path: Path | None = None) -> list[ClassifyResult]:
    """Ours, Trainer and TF-IDF on `cfg`'s classification data (one process, CPU)."""
    setup_logging()
    # Both trainers only at the end: evaluation is not part of the comparison's timing.
    cfg = replace(cfg, trainer=replace(cfg.trainer, eval_every=0, save_every=cfg.trainer.max_steps))
    if cfg.data.class_weights != "none":
        raise SystemExit("--classify compares unweighted losses (the Trainer's); set data.class_weights=none")
    data = prepare_data(cfg)
    if data.label_names is None:
        raise SystemExit("--classify needs a classification config (+exp=classify, data.kind=classify)")
    with tempfile.TemporaryDirectory(prefix="llmtrain-bench-classify-") as tmp:
        results = [bench_ours(cfg, data, Path(tmp)), bench_trainer(cfg, data, Path(tmp)), bench_tfidf(data)]
    text = table(results, cfg, data)
    print(text)
    if json_path is not None:
        json_path.write_text(json.dumps([r.to_dict() for r in results], indent=2) + "\n")
    return results
