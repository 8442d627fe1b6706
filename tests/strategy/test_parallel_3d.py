"""The 3-D mesh on the FSDP path: sequence parallel × tensor parallel (× FSDP over what is left).

Under `parallel.tp` each rank's attention holds num_heads / tp heads; Ulysses splits those over
`parallel.sp`. On 4 ranks sp=2 × tp=2 (dp_shard=1) must reproduce one process on packed SFT rows of
unequal length, and its checkpoint must export a normal Hugging Face folder with the trained
logits. The tiny model's 2 key/value heads do not divide by tp × sp = 4, so these runs (and their
single-process reference) use 4 key/value heads.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from launcher import launch, read_metrics
from transformers import AutoModelForCausalLM

from llmtrain.config import ConfigError, load_config

HERE = Path(__file__).resolve().parent
EXPORT = HERE.parents[1] / "launch" / "export_hf.py"
FIRST = 5
# fp32 on CPU; only the order of sums differs.
RTOL = 1e-4
SP_TP = {"strategy": "fsdp", "parallel.sp": 2, "parallel.tp": 2}


@pytest.fixture(scope="module")
def runs(sft_args, strategy_tmp) -> dict[str, Path]:
    """One process and sp=2 × tp=2 on 4 ranks, same packed SFT global batches, 5 steps each."""
    kv4 = {"model.num_kv_heads": 4, "trainer.max_steps": FIRST}
    launch("forked", 1, sft_args("kv4_single", **kv4))
    launch("forked", 4, sft_args("kv4_sp2_tp2", **kv4, **SP_TP))
    # Checkpointing recomputes each layer in backward: its attention must exchange as the forward did.
    launch(
        "forked", 4, sft_args("kv4_sp2_tp2_ckpt", **kv4, **SP_TP, **{"model.gradient_checkpointing": "true"})
    )
    return {name: strategy_tmp / f"kv4_{name}" for name in ("single", "sp2_tp2", "sp2_tp2_ckpt")}


def _rows(run_dir: Path) -> dict[int, tuple[float, float]]:
    return {m["step"]: (m["loss"], m["grad_norm"]) for m in read_metrics(run_dir) if "loss" in m}


@pytest.mark.slow
def test_sequence_times_tensor_parallel_on_four_ranks_reproduces_one_process(runs):
    ref, other = _rows(runs["single"]), _rows(runs["sp2_tp2"])
    assert "packing=True" in (runs["single"] / "train.log").read_text()
    # sp × tp takes all 4 ranks: one data-parallel rank, so every batch is split over the mesh.
    assert "data-parallel 1;" in (runs["sp2_tp2"] / "train.log").read_text()
    for step in range(1, FIRST + 1):
        assert other[step][0] == pytest.approx(ref[step][0], rel=RTOL), f"loss at step {step}"
        assert other[step][1] == pytest.approx(ref[step][1], rel=RTOL), f"grad norm at step {step}"
    # The runs train (a comparison of two constant runs would prove nothing).
    assert ref[FIRST][0] < ref[1][0]


@pytest.mark.slow
def test_sequence_parallel_with_gradient_checkpointing_recomputes_with_the_exchange(runs):
    """Before the backward ran with the exchange on, the recompute ran plain SDPA on the slice and
    torch.utils.checkpoint refused it (other shapes than the forward's)."""
    ref, other = _rows(runs["single"]), _rows(runs["sp2_tp2_ckpt"])
    for step in range(1, FIRST + 1):
        assert other[step][0] == pytest.approx(ref[step][0], rel=RTOL), f"loss at step {step}"
        assert other[step][1] == pytest.approx(ref[step][1], rel=RTOL), f"grad norm at step {step}"


@pytest.mark.slow
def test_export_of_a_sequence_times_tensor_parallel_run_has_the_trained_logits(runs, tmp_path):
    exports = {}
    for name in ("single", "sp2_tp2"):
        ckpt = runs[name] / "checkpoints" / f"step_{FIRST:06d}"
        launch("forked", 1, [str(ckpt), str(tmp_path / name)], script=EXPORT)
        exports[name] = AutoModelForCausalLM.from_pretrained(tmp_path / name).eval()
    ids = torch.randint(
        0, exports["single"].config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        a, b = (exports[n](input_ids=ids).logits for n in ("single", "sp2_tp2"))
    assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()
    # Five steps moved the weights: equal logits are not the initialisation's.
    with torch.no_grad():
        init = AutoModelForCausalLM.from_config(exports["single"].config)
    assert not torch.allclose(a, init(input_ids=ids).logits, atol=1e-2)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        # The tiny model's 2 key/value heads: 1 per tensor-parallel rank, which sp=2 cannot split.
        (
            ["parallel.sp=2", "parallel.tp=2"],
            r"parallel.sp=2 × parallel.tp=2 = 4 does not divide model.num_kv_heads=2",
        ),
        (["parallel.sp=2", "parallel.tp=2", "model.num_kv_heads=4"], None),
        (
            ["parallel.sp=4", "parallel.tp=2", "model.num_kv_heads=4"],
            r"parallel.sp=4 × parallel.tp=2 = 8 does not divide model.num_heads=4",
        ),
    ],
)
def test_sequence_times_tensor_parallel_needs_heads_divisible_by_both(overrides, message):
    overrides = ["strategy=fsdp", *overrides]
    if message is None:
        assert load_config(overrides).parallel.sp == 2
        return
    with pytest.raises(ConfigError, match=message):
        load_config(overrides)
