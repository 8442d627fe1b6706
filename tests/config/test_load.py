import pytest

from llmtrain.config import ConfigError, load_config, strip_launcher_args


def test_defaults_compose_into_typed_config():
    cfg = load_config([])
    assert cfg.model.name == "tiny" and cfg.data.format == "synthetic" and cfg.strategy.name == "single"


def test_typo_in_key_fails_naming_the_key_and_the_right_one():
    with pytest.raises(ConfigError) as err:
        load_config(["trainer.max_stesp=5"])
    assert "trainer.max_stesp" in str(err.value)
    assert "did you mean trainer.max_steps" in str(err.value)


def test_wrong_type_fails_naming_the_key():
    with pytest.raises(ConfigError, match=r"trainer\.max_steps"):
        load_config(["trainer.max_steps=many"])


def test_cross_field_check_names_both_keys():
    with pytest.raises(
        ConfigError, match=r"model\.num_kv_heads.*model\.num_heads|model\.num_heads.*num_kv_heads"
    ):
        load_config(["model.num_kv_heads=3"])


def test_unknown_choice_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="zero1, zero2, zero3"):
        load_config(["strategy.name=zero9"])


def test_experiment_file_overrides_groups_and_keys():
    cfg = load_config(["+exp=pretrain", "trainer.max_steps=7"])
    assert cfg.data.name == "tinyshakespeare"
    assert cfg.run.name == "pretrain_tinyshakespeare"
    assert cfg.trainer.max_steps == 7  # command line wins over the experiment file


def test_deepspeed_local_rank_argument_is_stripped():
    assert strip_launcher_args(["--local_rank=1", "a=1"]) == ["a=1"]
    assert strip_launcher_args(["--local_rank", "3", "a=1"]) == ["a=1"]
    assert load_config(["--local_rank=1", "trainer.max_steps=9"]).trainer.max_steps == 9


def test_global_batch_must_divide_into_micro_batches_times_ranks():
    cfg = load_config(["trainer.global_batch_size=16", "trainer.micro_batch_size=4"])
    assert cfg.trainer.grad_accum_for(dp_size=2) == 2
    with pytest.raises(ConfigError, match="trainer.global_batch_size=16"):
        cfg.trainer.grad_accum_for(dp_size=3)
    cfg = load_config(["trainer.grad_accum_steps=3", "trainer.micro_batch_size=4"])
    with pytest.raises(ConfigError, match="contradicts"):
        cfg.trainer.grad_accum_for(dp_size=1)


@pytest.mark.parametrize("model", ["tiny", "small", "llama3_2_1b", "llama3_8b", "qwen2_5_0_5b"])
def test_every_model_shape_composes(model):
    assert load_config([f"model={model}"]).model.name == model


def test_optim_fused_accepts_the_yaml_booleans_hydra_makes_of_true_and_false():
    assert load_config(["optim.fused=true"]).optim.fused == "true"
    assert load_config(["optim.fused=false"]).optim.fused == "false"
    with pytest.raises(ConfigError, match="optim.fused"):
        load_config(["optim.fused=sometimes"])


def test_a_plus_key_the_schema_lacks_fails_like_a_typo_instead_of_being_dropped():
    with pytest.raises(
        ConfigError, match=r"unknown config key 'trainer.max_stesp'; did you mean trainer.max_steps"
    ):
        load_config(["+trainer.max_stesp=5"])


def test_plus_keys_inside_free_form_dicts_are_kept():
    cfg = load_config(["+strategy.deepspeed.config.steps_per_print=7", "+data.sft.fields.instruction=prompt"])
    assert cfg.strategy.deepspeed.config == {"steps_per_print": 7}
    assert cfg.data.sft.fields == {"instruction": "prompt"}


def test_the_default_micro_batch_is_derived_so_the_same_command_runs_on_1_2_4_ranks():
    trainer = load_config([]).trainer
    assert [(trainer.micro_batch_for(dp), trainer.grad_accum_for(dp)) for dp in (1, 2, 4)] == [
        (16, 1),
        (8, 1),
        (4, 1),
    ]
    with pytest.raises(ConfigError, match="not divisible by data-parallel size 3"):
        trainer.grad_accum_for(3)
    accumulating = load_config(["trainer.grad_accum_steps=2"]).trainer
    assert (accumulating.micro_batch_for(2), accumulating.grad_accum_for(2)) == (4, 2)


def test_an_unknown_group_option_lists_the_options_that_exist():
    with pytest.raises(
        ConfigError, match="available options in 'strategy': fsdp, single, zero1, zero2, zero3"
    ):
        load_config(["strategy=zero4"])
