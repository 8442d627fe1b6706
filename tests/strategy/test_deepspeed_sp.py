"""DeepSpeed ZeRO-3 with Ulysses sequence parallel (`parallel.sp`, DeepSpeed's UlyssesSPAttentionHF
on our mesh's groups) reproduces one process on packed SFT rows of unequal length, on 2 ranks
(sp=2) and 4 (dp=2 × sp=2), with and without DeepSpeed's TiledMLP (`model.tiled_mlp`); a broken
all-to-all or a per-rank gradient scale is caught; a checkpoint resumes with the uninterrupted
losses and exports a normal Hugging Face folder.

Measured (fp32, CPU): every loss within 1e-7 relative and grad norm within 8e-7 of one process on
both layouts; the resumed steps 6-10 are bit-identical to the uninterrupted run.

DeepSpeed on CPU ranks over gloo, forked by the session's server (tests/forkserver.py: the engine
is what is tested here, not its launcher), sharing runs between assertions (module fixtures).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from launcher import launch, read_metrics
from transformers import AutoModelForCausalLM

from llmtrain.config import ConfigError, load_config
from llmtrain.dist import DistInfo
from llmtrain.strategy.deepspeed import build_ds_config

HERE = Path(__file__).resolve().parent
EXPORT = HERE.parents[1] / "launch" / "export_hf.py"
FAULTY = HERE / "ds_sp_faulty_train.py"
SP_PACKED = HERE / "sp_packed_probe.py"
STEPS, FIRST = 10, 5  # conftest.py sft_args: steps, and the first checkpoint
# fp32 on CPU; only the order of float sums differs from one process.
RTOL = 1e-4
ZERO3_SP2 = {"strategy": "zero3", "parallel.sp": 2}


def _rows(run_dir: Path) -> dict[int, tuple[float, float]]:
    return {m["step"]: (m["loss"], m["grad_norm"]) for m in read_metrics(run_dir) if "loss" in m}


def _assert_same(ref: dict, other: dict, steps, rtol: float = RTOL) -> None:
    for step in steps:
        assert other[step][0] == pytest.approx(ref[step][0], rel=rtol), f"loss at step {step}"
        assert other[step][1] == pytest.approx(ref[step][1], rel=rtol), f"grad norm at step {step}"


@pytest.fixture(scope="module")
def reference(sft_reference) -> Path:
    """One process, packed SFT (tests/strategy/conftest.py): what every layout must reproduce."""
    return sft_reference


@pytest.fixture(scope="module")
def zero3_sp2(sft_args, strategy_tmp) -> Path:
    """ZeRO-3 with sp=2 on 2 ranks, 10 steps, checkpoints at 5 and 10."""
    launch("forked", 2, sft_args("zero3_sp2", **ZERO3_SP2, **{"trainer.max_steps": STEPS}), timeout=600)
    return strategy_tmp / "zero3_sp2"


@pytest.mark.slow
def test_packed_rows_have_unequal_lengths_so_the_token_mean_is_tested(reference):
    assert "packing=True" in (reference / "train.log").read_text()


@pytest.mark.slow
def test_zero3_sequence_parallel_on_two_ranks_reproduces_one_process(reference, zero3_sp2):
    assert "strategy zero3" in (zero3_sp2 / "train.log").read_text()
    _assert_same(_rows(reference), _rows(zero3_sp2), range(1, FIRST + 1))


@pytest.mark.slow
def test_zero3_data_times_sequence_parallel_on_four_ranks_reproduces_one_process(
    reference, sft_args, strategy_tmp
):
    """dp=2 × sp=2: the engine's batch arithmetic uses dp=2 (accumulation 2 of micro 2), ZeRO
    partitions and reduces over all 4 ranks."""
    launch(
        "forked",
        4,
        sft_args("zero3_dp2_sp2", **ZERO3_SP2, **{"trainer.max_steps": FIRST, "trainer.save_every": 100}),
        timeout=600,
    )
    log = (strategy_tmp / "zero3_dp2_sp2" / "train.log").read_text()
    assert "micro 2 × accumulation 2 × data-parallel 2" in log
    _assert_same(_rows(reference), _rows(strategy_tmp / "zero3_dp2_sp2"), range(1, FIRST + 1))


@pytest.mark.slow
def test_packed_examples_under_zero3_sequence_parallel_have_the_losses_of_each_example_alone(tmp_path):
    """One row packs examples of unequal length, one across the two ranks' slices: each example's
    loss must be its loss alone (our document mask through DeepSpeed's Ulysses, sliced positions)."""
    out = tmp_path / "losses.json"
    launch("forked", 2, [str(out), "strategy=zero3"], script=SP_PACKED, timeout=600)
    losses = json.loads(out.read_text())
    assert losses["packed"] == pytest.approx(losses["alone"], rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["zero1", "zero2"])
def test_zero1_and_zero2_sequence_parallel_reproduce_one_process(reference, sft_args, stage, strategy_tmp):
    """ZeRO-1/2 divide the reduced gradients by dp only where ZeRO-3 divides by dp × sp
    (`DeepSpeedStrategy._grad_divisor`): both must give the one-process gradients."""
    extra = {"parallel.sp": 2, "trainer.max_steps": 2, "trainer.save_every": 100}
    launch("forked", 2, sft_args(f"{stage}_sp2", strategy=stage, **extra), timeout=600)
    _assert_same(_rows(reference), _rows(strategy_tmp / f"{stage}_sp2"), range(1, 3))


@pytest.mark.slow
def test_tiled_mlp_under_zero3_sequence_parallel_reproduces_one_process(reference, sft_args, strategy_tmp):
    """DeepSpeed's TiledMLP defers ZeRO-3's gradient hooks to the last shard; the gradients must
    still be the untiled ones."""
    extra = {"model.tiled_mlp": 4, "trainer.max_steps": 2, "trainer.save_every": 100}
    launch("forked", 2, sft_args("zero3_sp2_tiled", **ZERO3_SP2, **extra), timeout=600)
    _assert_same(_rows(reference), _rows(strategy_tmp / "zero3_sp2_tiled"), range(1, 3))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fault", "first_failure"), [("all_to_all", "loss at step 1"), ("divisor", "grad norm at step 1")]
)
def test_negative_controls_a_broken_all_to_all_or_gradient_scale_is_caught(
    reference, sft_args, fault, first_failure, strategy_tmp
):
    name = f"zero3_sp2_faulty_{fault}"
    args = sft_args(name, **ZERO3_SP2, **{"trainer.max_steps": 2, "trainer.save_every": 100})
    launch("forked", 2, args, script=FAULTY, env={"LLMTRAIN_SP_FAULT": fault}, timeout=600)
    with pytest.raises(AssertionError, match=first_failure):
        _assert_same(_rows(reference), _rows(strategy_tmp / name), range(1, 3))


@pytest.mark.slow
def test_a_zero3_sequence_parallel_run_resumed_at_step_5_continues_with_the_same_losses(
    zero3_sp2, sft_args, strategy_tmp
):
    resumed = strategy_tmp / "zero3_sp2_resumed"
    step = f"step_{FIRST:06d}"
    shutil.copytree(zero3_sp2 / "checkpoints" / step, resumed / "checkpoints" / step)
    launch(
        "forked",
        2,
        sft_args("zero3_sp2_resumed", **ZERO3_SP2, **{"trainer.max_steps": STEPS}),
        timeout=600,
    )
    rows = _rows(resumed)
    assert sorted(rows) == list(range(FIRST + 1, STEPS + 1))  # it did resume at step 5
    _assert_same(_rows(zero3_sp2), rows, range(FIRST + 1, STEPS + 1), rtol=1e-6)


@pytest.mark.slow
def test_export_of_a_zero3_sequence_parallel_run_is_a_normal_hf_folder_with_the_trained_logits(
    reference, zero3_sp2, tmp_path
):
    step = f"step_{FIRST:06d}"
    exports = {}
    for name, run in (("single", reference), ("zero3_sp2", zero3_sp2)):
        launch("forked", 1, [str(run / "checkpoints" / step), str(tmp_path / name)], script=EXPORT)
        exports[name] = AutoModelForCausalLM.from_pretrained(tmp_path / name).eval()
    ids = torch.randint(
        0, exports["single"].config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        a, b = (exports[n](input_ids=ids).logits for n in ("single", "zero3_sp2"))
    assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()


@pytest.mark.parametrize("stage", ["zero1", "zero2", "zero3", "zero3_offload"])
def test_sequence_parallel_is_accepted_with_every_deepspeed_stage(stage):
    assert load_config([f"strategy={stage}", "parallel.sp=2"]).parallel.sp == 2


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["strategy=zero3", "parallel.sp=4"], "parallel.sp=4 does not divide model.num_kv_heads=2"),
        (["strategy=zero3", "parallel.sp=8"], "parallel.sp=8 does not divide model.num_heads=4"),
        (
            ["strategy=zero3", "parallel.sp=2", "data.seq_len=127"],
            "parallel.sp=2 does not divide data.seq_len",
        ),
        (["strategy=zero3", "parallel.sp=2", "model.attn_implementation=eager"], "wraps PyTorch SDPA"),
        (["strategy=zero3", "parallel.tp=2"], "parallel.tp=2 needs strategy=fsdp .*DeepSpeed"),
        (["strategy=zero2", "parallel.dp_replicate=2"], "parallel.dp_replicate=2 needs strategy=fsdp"),
    ],
)
def test_unsupported_deepspeed_sequence_parallel_settings_fail_before_any_work(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides)


def test_zero3_sequence_parallel_pins_the_reduce_scatter_whose_divisor_the_backward_assumes():
    cpu = DistInfo(rank=0, world_size=2, local_rank=0, device=torch.device("cpu"))
    cfg = load_config(["strategy=zero3", "parallel.sp=2"])
    assert build_ds_config(cfg, 1, cpu.device)["zero_optimization"]["reduce_scatter"] is True
    off = ["+strategy.deepspeed.config.zero_optimization.reduce_scatter=false"]
    with pytest.raises(ConfigError, match="reduce_scatter=false with parallel.sp > 1"):
        build_ds_config(load_config(["strategy=zero3", "parallel.sp=2", *off]), 1, cpu.device)
    assert (
        "reduce_scatter"
        not in build_ds_config(load_config(["strategy=zero3"]), 1, cpu.device)["zero_optimization"]
    )
