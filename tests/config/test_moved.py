"""Keys that moved (`llmtrain/config/moved.py`): old spellings fail with the new place; old run
directories' config.yaml files still load."""

import pytest
from omegaconf import OmegaConf

from llmtrain.config import ConfigError, from_yaml, load_config
from llmtrain.config.moved import migrate, moved_to


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("strategy.overlap_comm=false", "strategy.deepspeed.overlap_comm"),
        ("strategy.reshard_after_forward=false", "strategy.fsdp.reshard_after_forward"),
        ("strategy.timeout_s=30", "dist.timeout_s"),
    ],
)
def test_an_old_key_on_the_command_line_fails_naming_its_new_place(old, new):
    with pytest.raises(ConfigError, match=f"has moved to '{new}'"):
        load_config([old])


def test_sub_keys_move_with_their_parent():
    assert moved_to("strategy.ds_config.zero_optimization.stage") == (
        "strategy.deepspeed.config.zero_optimization.stage"
    )
    assert moved_to("strategy.name") is None


def test_a_config_yaml_written_before_the_move_loads_with_values_at_the_new_place(tmp_path):
    old = {
        "strategy": {
            "name": "zero2",
            "zero_stage": 2,
            "overlap_comm": False,
            "ds_config": {"steps_per_print": 7},
            "reduce_dtype": "bfloat16",
            "timeout_s": 42,
        }
    }
    path = tmp_path / "config.yaml"
    path.write_text(OmegaConf.to_yaml(old))
    cfg = from_yaml(path)
    assert cfg.strategy.deepspeed.overlap_comm is False
    assert cfg.strategy.deepspeed.config == {"steps_per_print": 7}
    assert cfg.strategy.fsdp.reduce_dtype == "bfloat16"
    assert cfg.dist.timeout_s == 42
    assert "zero_stage" not in migrate(old)["strategy"]
