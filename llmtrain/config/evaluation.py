"""Schema of what evaluation adds to training: `trainer.early_stopping.*`, and the checks of the
SFT reply metrics (`trainer.eval_generate`, `data.choices`)."""

from __future__ import annotations

from dataclasses import dataclass

from llmtrain.config.checks import one_of, require
from llmtrain.config.data import DataConfig

EARLY_STOPPING_MODES = ("min", "max")


@dataclass
class EarlyStoppingConfig:
    """`trainer.early_stopping.*`: stop when a validation metric has not improved for `patience`
    evaluations. Off while `metric` is null. The best evaluation's checkpoint is kept whatever
    `trainer.keep_last` deletes, and `launch/export_hf.py RUN OUT --best` exports it."""

    # Any metric the evaluation logs (val_loss, val_ppl, val_accuracy, val_macro_f1, val_bleu, ...).
    metric: str | None = None
    # min: lower is better (losses); max: higher is better (accuracy, F1, BLEU).
    mode: str = "min"
    # Evaluations without an improvement before the run stops.
    patience: int = 3
    # An improvement must beat the best value by more than this.
    min_delta: float = 0.0

    def __post_init__(self) -> None:
        one_of(self.mode, "trainer.early_stopping.mode", EARLY_STOPPING_MODES)
        require(self.patience >= 1, "trainer.early_stopping.patience", f"must be >= 1, got {self.patience}")
        require(
            self.min_delta >= 0, "trainer.early_stopping.min_delta", f"must be >= 0, got {self.min_delta}"
        )


def check_reply_eval(eval_generate: int, data: DataConfig) -> None:
    """Generated answers and choice scoring read the reply of each validation example: SFT with
    loss on the replies only, so the prompt/reply boundary is in the loss mask."""
    for key, on in (("trainer.eval_generate", eval_generate > 0), ("data.choices", bool(data.choices))):
        if not on:
            continue
        require(data.kind == "sft", key, f"scores SFT replies; it needs data.kind=sft, got {data.kind}")
        require(
            not data.sft.train_on_prompt,
            key,
            "needs data.sft.train_on_prompt=false: the reply to score is found from the loss mask",
        )
