"""W&B run name, group and tags come from the config: the overrides that matter, the experiment."""

from __future__ import annotations

from llmtrain.config import load_config
from llmtrain.tracking.naming import run_group, run_name, run_tags


def test_run_name_is_run_name_plus_the_overrides_that_change_training():
    cfg = load_config(["run.name=ablation", "optim.lr=3e-4", "model=small", "trainer.max_steps=50"])
    assert run_name(cfg) == "ablation-model=small-lr=0.0003-max_steps=50"


def test_run_name_leaves_out_where_the_run_writes_and_how_it_reports():
    cfg = load_config(
        ["run.dir=/tmp/somewhere", "data.cache_dir=/tmp/cache", "logger=wandb", "trainer.log_every=1"]
    )
    assert run_name(cfg) == "default"


def test_explicit_run_name_wins():
    assert run_name(load_config(["logger.run_name=mine", "optim.lr=3e-4"])) == "mine"


def test_group_is_the_experiment_unless_set():
    assert run_group(load_config(["run.name=sweep_lr"])) == "sweep_lr"
    assert run_group(load_config(["run.name=sweep_lr", "logger.group=g1"])) == "g1"


def test_tags_hold_user_tags_then_run_model_strategy_data_without_duplicates():
    cfg = load_config(["run.name=exp", "logger.tags=[baseline,exp]", "model=small"])
    assert run_tags(cfg) == ["baseline", "exp", "model:small", "strategy:single", "data:synthetic"]
