"""Config diffs on dotted keys: what a run changed relative to the defaults, and between runs."""

from __future__ import annotations

from llmtrain.config import load_config
from llmtrain.config.diff import MISSING, diff, differing_keys, flatten, overrides_from_defaults


def test_flatten_spells_nested_keys_dotted_and_keeps_lists_and_empty_dicts_whole():
    tree = {"optim": {"lr": 0.1, "betas": [0.9, 0.95]}, "strategy": {"ds_config": {}}, "top": 1}
    assert flatten(tree) == {
        "optim.lr": 0.1,
        "optim.betas": [0.9, 0.95],
        "strategy.ds_config": {},
        "top": 1,
    }


def test_diff_reports_changed_values_and_keys_one_side_lacks():
    a = {"trainer": {"max_steps": 10, "seed": 1}, "old": {"key": 1}}
    b = {"trainer": {"max_steps": 20, "seed": 1}, "new": 2}
    assert diff(a, b) == {
        "new": (MISSING, 2),
        "old.key": (1, MISSING),
        "trainer.max_steps": (10, 20),
    }


def test_default_config_has_no_overrides():
    assert overrides_from_defaults(load_config([])) == {}


def test_overrides_from_defaults_are_exactly_the_keys_the_user_set():
    cfg = load_config(["optim.lr=3e-4", "trainer.max_steps=7", "optim.betas=[0.8,0.9]"])
    assert overrides_from_defaults(cfg) == {
        "optim.betas": [0.8, 0.9],
        "optim.lr": 3e-4,
        "trainer.max_steps": 7,
    }


def test_group_switch_is_one_override_plus_only_the_keys_changed_on_top_of_it():
    cfg = load_config(["model=small", "model.num_layers=2"])
    # model=small changes hidden_size, num_heads, ...: those belong to the choice, not listed.
    assert overrides_from_defaults(cfg) == {"model.name": "small", "model.num_layers": 2}


def test_differing_keys_across_several_runs():
    a = load_config(["optim.lr=1e-3"])
    b = load_config(["optim.lr=2e-3"])
    c = load_config(["optim.lr=1e-3", "trainer.seed=7"])
    assert differing_keys([a, b, c]) == ["optim.lr", "trainer.seed"]
    assert differing_keys([a, a]) == []
