"""The device mesh on the FSDP path: tensor parallel (DTensor), sequence parallel (Ulysses) and HSDP
reproduce one process, on packed SFT rows of unequal length; tensor- and sequence-parallel
checkpoints resume as plain FSDP and export a normal Hugging Face folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from launcher import launch, read_metrics
from transformers import AutoModelForCausalLM

from llmtrain.config import ConfigError, load_config
from llmtrain.dist import ParallelDims

HERE = Path(__file__).resolve().parent
EXPORT = HERE.parents[1] / "launch" / "export_hf.py"
FAULTY = HERE / "parallel_faulty_train.py"
SP_FAULTY = HERE / "sp_faulty_train.py"
SP_PACKED = HERE / "sp_packed_probe.py"
STEPS, FIRST = 10, 5  # conftest.py sft_args: steps, and the first checkpoint
# fp32 on CPU; only the order of sums differs (measured: losses within 1e-6, grad norms 1e-6 rel).
RTOL = 1e-4


def _rows(run_dir: Path) -> dict[int, tuple[float, float]]:
    return {m["step"]: (m["loss"], m["grad_norm"]) for m in read_metrics(run_dir) if "loss" in m}


def _assert_same(ref: dict, other: dict, steps) -> None:
    for step in steps:
        assert other[step][0] == pytest.approx(ref[step][0], rel=RTOL), f"loss at step {step}"
        assert other[step][1] == pytest.approx(ref[step][1], rel=RTOL), f"grad norm at step {step}"


@pytest.fixture(scope="module")
def reference(sft_reference) -> Path:
    """One process, packed SFT (tests/strategy/conftest.py): what every layout must reproduce."""
    return sft_reference


@pytest.fixture(scope="module")
def tp2(sft_args, strategy_tmp) -> Path:
    launch("forked", 2, sft_args("tp2", strategy="fsdp", **{"parallel.tp": 2, "trainer.max_steps": FIRST}))
    return strategy_tmp / "tp2"


@pytest.fixture(scope="module")
def sp2(sft_args, strategy_tmp) -> Path:
    """Sequence parallel on 2 ranks, the full 10 steps, saving at step 5."""
    launch("forked", 2, sft_args("sp2", strategy="fsdp", **{"parallel.sp": 2}))
    return strategy_tmp / "sp2"


@pytest.mark.slow
def test_packed_rows_have_unequal_lengths_so_the_token_mean_is_tested(reference):
    assert "packing=True" in (reference / "train.log").read_text()


@pytest.mark.slow
def test_tensor_parallel_on_two_ranks_reproduces_one_process(reference, tp2):
    _assert_same(_rows(reference), _rows(tp2), range(1, FIRST + 1))


@pytest.mark.slow
def test_sequence_parallel_on_two_ranks_reproduces_one_process(reference, sp2):
    _assert_same(_rows(reference), _rows(sp2), range(1, FIRST + 1))


@pytest.mark.slow
@pytest.mark.parametrize(
    "layout",
    [{"parallel.tp": 2}, {"parallel.dp_replicate": 2}, {"parallel.sp": 2}],
    ids=["tp2_x_fsdp2", "hsdp2_x_fsdp2", "sp2_x_fsdp2"],
)
def test_four_rank_meshes_reproduce_one_process(reference, sft_args, layout, strategy_tmp):
    name = "mesh4_" + "_".join(f"{k.split('.')[1]}{v}" for k, v in layout.items())
    launch("forked", 4, sft_args(name, strategy="fsdp", **{**layout, "trainer.max_steps": FIRST}))
    _assert_same(_rows(reference), _rows(strategy_tmp / name), range(1, FIRST + 1))


@pytest.mark.slow
def test_negative_control_a_label_count_over_all_ranks_is_caught(reference, sft_args, strategy_tmp):
    """Counting the labels over tensor-parallel peers too halves every gradient: the comparison
    above must fail on it (losses agree at step 1; the grad norm does not)."""
    args = sft_args("tp2_faulty", strategy="fsdp", **{"parallel.tp": 2, "trainer.max_steps": 2})
    launch("forked", 2, args, script=FAULTY)
    with pytest.raises(AssertionError, match="grad norm at step 1"):
        _assert_same(_rows(reference), _rows(strategy_tmp / "tp2_faulty"), range(1, 3))


@pytest.mark.slow
def test_packed_examples_under_sequence_parallel_have_the_losses_of_each_example_alone(tmp_path):
    out = tmp_path / "losses.json"
    launch("forked", 2, [str(out)], script=SP_PACKED)
    losses = json.loads(out.read_text())
    assert losses["packed"] == pytest.approx(losses["alone"], rel=1e-5)


@pytest.mark.slow
def test_negative_control_an_all_to_all_that_keeps_its_own_chunks_is_caught(
    reference, sft_args, strategy_tmp
):
    """An all-to-all that sends nothing (each rank keeps its own chunks: attention then sees its
    own slice repeated, not the sequence) must fail the comparison at the first step."""
    args = sft_args("sp2_faulty", strategy="fsdp", **{"parallel.sp": 2, "trainer.max_steps": 2})
    launch("forked", 2, args, script=SP_FAULTY)
    with pytest.raises(AssertionError, match="loss at step 1"):
        _assert_same(_rows(reference), _rows(strategy_tmp / "sp2_faulty"), range(1, 3))


@pytest.mark.slow
def test_a_sequence_parallel_run_resumed_at_step_5_continues_with_the_same_losses(
    reference, sp2, sft_args, strategy_tmp
):
    resumed = strategy_tmp / "sp2_resumed"
    resumed.mkdir()
    shutil.copytree(sp2 / "checkpoints" / f"step_{FIRST:06d}", resumed / "checkpoints" / f"step_{FIRST:06d}")
    launch("forked", 2, sft_args("sp2_resumed", strategy="fsdp", **{"parallel.sp": 2}))
    _assert_same(_rows(sp2), _rows(resumed), range(FIRST + 1, STEPS + 1))
    _assert_same(_rows(reference), _rows(resumed), range(FIRST + 1, STEPS + 1))


@pytest.mark.slow
def test_a_sequence_parallel_checkpoint_resumes_as_plain_fsdp_with_the_same_losses(
    reference, sp2, sft_args, strategy_tmp
):
    resumed = strategy_tmp / "sp2_as_fsdp"
    resumed.mkdir()
    shutil.copytree(sp2 / "checkpoints" / f"step_{FIRST:06d}", resumed / "checkpoints" / f"step_{FIRST:06d}")
    launch("forked", 2, sft_args("sp2_as_fsdp", strategy="fsdp"))
    _assert_same(_rows(reference), _rows(resumed), range(FIRST + 1, STEPS + 1))


@pytest.mark.slow
def test_a_tensor_parallel_checkpoint_resumes_as_plain_fsdp_with_the_same_losses(
    reference, tp2, sft_args, strategy_tmp
):
    resumed = strategy_tmp / "tp2_as_fsdp"
    shutil.copytree(tp2, resumed)
    launch("forked", 2, sft_args("tp2_as_fsdp", strategy="fsdp"))
    _assert_same(_rows(reference), _rows(resumed), range(FIRST + 1, STEPS + 1))


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["tp2", "sp2"])
def test_export_of_a_tensor_or_sequence_parallel_run_is_a_normal_hf_folder_with_the_trained_logits(
    reference, request, tmp_path, layout
):
    run = request.getfixturevalue(layout) / "checkpoints" / f"step_{FIRST:06d}"
    exports = {}
    for name, ckpt in (("single", reference / "checkpoints" / f"step_{FIRST:06d}"), (layout, run)):
        launch("forked", 1, [str(ckpt), str(tmp_path / name)], script=EXPORT)
        exports[name] = AutoModelForCausalLM.from_pretrained(tmp_path / name).eval()
    ids = torch.randint(
        0, exports["single"].config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        a, b = (exports[n](input_ids=ids).logits for n in ("single", layout))
    assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()


def test_a_world_size_the_degrees_do_not_divide_fails_naming_the_keys():
    cfg = load_config(["strategy=fsdp", "parallel.tp=2", "parallel.dp_replicate=2"])
    assert ParallelDims.from_config(cfg.parallel, 8) == ParallelDims(dp_replicate=2, dp_shard=2, tp=2)
    with pytest.raises(
        ConfigError, match=r"world size 6 is not divisible by parallel.dp_replicate=2 .* parallel.tp=2 = 4"
    ):
        ParallelDims.from_config(cfg.parallel, 6)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["strategy=zero3", "parallel.tp=2"], "parallel.tp=2 needs strategy=fsdp"),
        (["strategy=fsdp", "parallel.tp=3"], "parallel.tp=3 does not divide model.num_heads=4"),
        (["parallel.sp=2"], "parallel.sp=2 needs strategy=fsdp"),
        (["strategy=fsdp", "parallel.sp=8"], "parallel.sp=8 does not divide model.num_heads=4"),
        (["strategy=fsdp", "parallel.sp=4"], "parallel.sp=4 does not divide model.num_kv_heads=2"),
        (
            ["strategy=fsdp", "parallel.sp=2", "data.seq_len=127"],
            "parallel.sp=2 does not divide data.seq_len=127",
        ),
        (["strategy=fsdp", "parallel.sp=2", "model.attn_implementation=eager"], "wraps PyTorch SDPA"),
        (["strategy=single", "parallel.dp_replicate=2"], "parallel.dp_replicate=2 needs strategy=fsdp"),
    ],
)
def test_unsupported_mesh_settings_fail_before_any_work(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides)
