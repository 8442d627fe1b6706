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
        ("data.packing=true", "data.sft.packing"),
        ("data.chat_template=llama3", "data.sft.chat_template"),
        ("data.synthetic_examples=10", "data.sft.synthetic_examples"),
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
    assert moved_to("data.fields.instruction") == "data.sft.fields.instruction"
    assert moved_to("data.format") is None  # moves only for kind=sft: see migrate


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


def test_an_sft_config_yaml_with_flat_data_keys_loads_with_them_under_data_sft(tmp_path):
    old = {
        "data": {
            "name": "alpaca_demo",
            "kind": "sft",
            "path": "a.json",
            "format": "alpaca",
            "chat_template": "chatml",
            "packing": True,
            "document_masking": True,
            "fields": {"instruction": "prompt"},
            "max_examples": 5,
        }
    }
    path = tmp_path / "config.yaml"
    path.write_text(OmegaConf.to_yaml(old))
    cfg = from_yaml(path)
    assert cfg.data.sft.format == "alpaca" and cfg.data.format == "synthetic"  # the default
    assert cfg.data.sft.chat_template == "chatml" and cfg.data.sft.packing is True
    assert cfg.data.sft.fields == {"instruction": "prompt"} and cfg.data.sft.max_examples == 5
    assert "packing" not in migrate(old)["data"]


def test_migrate_leaves_a_config_written_after_the_move_as_it_is():
    new = {"data": {"kind": "sft", "format": "synthetic", "sft": {"format": "alpaca"}}}
    assert migrate(new) == new
    pretrain = {"data": {"kind": "pretrain", "format": "jsonl"}}
    assert migrate(pretrain) == pretrain


def test_an_sft_row_format_in_data_format_says_to_use_data_sft_format():
    with pytest.raises(ConfigError, match="data.sft.format=alpaca"):
        load_config(["data=alpaca_demo", "data.format=alpaca"])
