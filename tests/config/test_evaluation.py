"""`trainer.early_stopping.*`, `trainer.eval_generate` and `data.choices`: bad values fail when the
config is loaded, naming the key and what was expected."""

from __future__ import annotations

import pytest

from llmtrain.config import ConfigError, load_config


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["trainer.early_stopping.metric=val_loss", "trainer.early_stopping.mode=up"],
            r"early_stopping\.mode: got 'up', expected one of min, max",
        ),
        (
            ["trainer.early_stopping.metric=val_loss", "trainer.early_stopping.patience=0"],
            r"early_stopping\.patience: must be >= 1",
        ),
        (["trainer.early_stopping.min_delta=-0.1"], r"early_stopping\.min_delta: must be >= 0"),
        (
            ["trainer.early_stopping.metric=val_loss", "trainer.eval_every=0"],
            r"early_stopping\.metric: .*trainer\.eval_every is 0",
        ),
        (["trainer.eval_generate=4"], r"trainer\.eval_generate: scores SFT replies; it needs data\.kind=sft"),
        (
            ["+exp=sft", "trainer.eval_generate=4", "data.sft.train_on_prompt=true"],
            r"trainer\.eval_generate: needs data\.sft\.train_on_prompt=false",
        ),
        (["+exp=sft", "data.choices=[yes,yes]"], r"data\.choices: must be distinct"),
        (["+exp=sft", "data.choices=[yes]"], r"data\.choices: needs at least two"),
    ],
)
def test_bad_evaluation_settings_fail_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides)


def test_the_tracked_best_metric_follows_early_stopping_then_keep_best():
    assert load_config([]).trainer.best_metric is None
    assert load_config(["trainer.keep_best=true"]).trainer.best_metric == ("val_loss", "min")
    es = ["trainer.early_stopping.metric=val_macro_f1", "trainer.early_stopping.mode=max"]
    assert load_config(es).trainer.best_metric == ("val_macro_f1", "max")
