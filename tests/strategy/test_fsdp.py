"""FSDP2 reproduces `single` (losses, grad norms, token-exact gradients), resumes exactly (also on
another world size), exports to Hugging Face, trains in bf16, skips fp16 overflow steps, runs across
two "nodes", and fails in bounded time when a rank is stuck.

Numeric runs are ranks forked by the session's server (tests/forkserver.py); real torchrun agents
run the two-"node" and stuck-rank tests, where the launcher is part of what is tested."""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import pytest
import torch
from launcher import launch, launch_nodes, read_metrics, step_losses
from test_single import (
    FAULT_SCRIPT,
    GRAD_ATOL,
    GRAD_NORM_RTOL,
    LOSS_ATOL,
    check_overflow_skipped,
    max_grad_diff,
)
from transformers import AutoConfig, AutoModelForCausalLM

from llmtrain.checkpoint import layout
from llmtrain.config import from_yaml
from llmtrain.dist import DistInfo
from llmtrain.model.loss import CausalLMLoss
from llmtrain.strategy.fsdp import FSDPStrategy

pytestmark = pytest.mark.slow

EXPORT = Path(__file__).resolve().parents[2] / "launch" / "export_hf.py"
FSDP = {"strategy": "fsdp"}
N = 5  # steps before the interruption in the resume tests


def assert_same_losses(ref: dict[int, float], other: dict[int, float], steps, atol: float) -> None:
    diffs = {s: abs(other[s] - ref[s]) for s in steps}
    assert max(diffs.values()) <= atol, diffs


@pytest.fixture(scope="module")
def fsdp_run(tiny_args, strategy_tmp) -> Path:
    launch("forked", 2, tiny_args("fsdp", **FSDP))
    return strategy_tmp / "fsdp"


@pytest.fixture(scope="module")
def interrupted_at_n(tiny_args, strategy_tmp) -> Path:
    """A 2-rank fsdp run stopped after N steps (its last checkpoint is step N)."""
    launch("forked", 2, tiny_args("fsdp_resumed", **FSDP, **{"trainer.max_steps": N}))
    # A copy to resume on one rank, taken before the 2-rank resume adds checkpoints.
    shutil.copytree(strategy_tmp / "fsdp_resumed", strategy_tmp / "fsdp_resumed_1rank")
    return strategy_tmp / "fsdp_resumed"


def test_fsdp_on_two_ranks_reproduces_single_process_losses(single_run, fsdp_run):
    ref, fsdp = step_losses(single_run), step_losses(fsdp_run)
    assert sorted(fsdp) == list(range(1, 11))
    assert_same_losses(ref, fsdp, ref, LOSS_ATOL)
    norms = {m["step"]: m["grad_norm"] for m in read_metrics(single_run) if "grad_norm" in m}
    for m in read_metrics(fsdp_run):
        if "grad_norm" in m:  # the norm sees a wrong reduction scale that Adam's update hides
            assert m["grad_norm"] == pytest.approx(norms[m["step"]], rel=GRAD_NORM_RTOL)


@pytest.mark.parametrize(
    ("variant", "reference"),
    [
        ("plain", "plain"),
        ("checkpointing+tied", "checkpointing+tied"),
        ("offload+keep-unsharded", "plain"),  # cpu_offload and reshard_after_forward=false
    ],
)
def test_fsdp_gradient_is_token_exact_with_accumulation_and_unequal_labels(grad_dumps, variant, reference):
    """micro 1 × accum 2 × 2 ranks under fsdp == micro 4 × accum 1 × 1 rank under single."""
    ref, fsdp = grad_dumps[1, f"single/4/{reference}"], grad_dumps[2, f"fsdp/1/{variant}"]
    assert max_grad_diff(ref["grads"], fsdp["grads"]) <= GRAD_ATOL
    assert fsdp["grad_norm"] == pytest.approx(ref["grad_norm"], rel=GRAD_NORM_RTOL)


def test_fsdp_rank_holds_half_of_single_params_grads_and_optimizer_state(grad_dumps):
    single, fsdp = grad_dumps[1, "single/4/plain"]["memory"], grad_dumps[2, "fsdp/1/plain"]["memory"]
    assert single.keys() == fsdp.keys()
    # Every dim-0 size of the test model is even, so shards are exact halves; only AdamW's
    # per-parameter `step` scalars (4 bytes each) are replicated.
    for key in single:
        assert fsdp[key] * 2 == pytest.approx(single[key], rel=1e-3), (key, fsdp[key], single[key])


def test_fsdp_resume_continues_with_identical_losses(fsdp_run, interrupted_at_n, tiny_args):
    launch("forked", 2, tiny_args("fsdp_resumed", **FSDP))
    ref, resumed = step_losses(fsdp_run), step_losses(interrupted_at_n)
    assert sorted(resumed) == list(range(1, 11))
    # Same world size: every tensor is restored bit for bit, so the losses are identical.
    assert {s: resumed[s] for s in range(N + 1, 11)} == {s: ref[s] for s in range(N + 1, 11)}


def test_fsdp_resumes_a_two_rank_checkpoint_on_one_rank(fsdp_run, interrupted_at_n, tiny_args, strategy_tmp):
    """DCP reshards the 2-rank checkpoint onto 1 rank; only the summation order changes."""
    launch("forked", 1, tiny_args("fsdp_resumed_1rank", **FSDP))
    resumed = step_losses(strategy_tmp / "fsdp_resumed_1rank")
    assert_same_losses(step_losses(fsdp_run), resumed, range(N + 1, 11), LOSS_ATOL)


def test_export_from_fsdp_checkpoint_reproduces_the_trained_models_logits(fsdp_run, tmp_path):
    launch("forked", 1, [str(fsdp_run), str(tmp_path / "hf")], script=EXPORT)
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", attn_implementation="sdpa").eval()

    # The trained model: the checkpoint's shards loaded by the strategy itself (here on one rank).
    ckpt = layout.latest_checkpoint(fsdp_run)
    strategy = FSDPStrategy(from_yaml(ckpt / "config.yaml"), DistInfo(0, 1, 0, torch.device("cpu")))
    hf_config = AutoConfig.from_pretrained(ckpt / "hf_config")
    model = AutoModelForCausalLM.from_config(hf_config, attn_implementation="sdpa")
    try:
        strategy.setup(CausalLMLoss(model, False), lambda step: 1.0)
        strategy.load(ckpt / "model")
        full = strategy.full_state_dict()
        input_ids = torch.randint(
            0, hf_config.vocab_size, (2, 48), generator=torch.Generator().manual_seed(0)
        )
        with strategy.eval_mode():
            trained = strategy.forward({"input_ids": input_ids, "labels": None})  # logits
    finally:
        torch.distributed.destroy_process_group()

    with torch.no_grad():
        assert torch.allclose(exported(input_ids).logits, trained, atol=1e-5, rtol=0)
    consolidated = FSDPStrategy.consolidate(ckpt / "model")
    assert full.keys() == consolidated.keys()
    assert all(torch.equal(full[k], consolidated[k]) for k in full)
    assert all(v.dtype == torch.float32 for v in consolidated.values())


def test_fsdp_trains_in_bf16(tiny_args, strategy_tmp):
    launch("forked", 2, tiny_args("fsdp_bf16", **FSDP, **{"trainer.precision": "bf16"}))
    losses = list(step_losses(strategy_tmp / "fsdp_bf16").values())
    assert len(losses) == 10 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0] - 0.5, losses


def test_fsdp_fp16_overflow_step_is_skipped_and_training_continues(tiny_args, strategy_tmp):
    args = tiny_args("fsdp_fp16", **FSDP, **{"trainer.precision": "fp16", "trainer.max_steps": 6})
    proc = launch("forked", 2, args, script=FAULT_SCRIPT, env={"FAULT": "inf", "FAULT_STEP": "3"})
    run_dir = strategy_tmp / "fsdp_fp16"
    check_overflow_skipped(run_dir, 3, proc.stdout + proc.stderr)
    weights = FSDPStrategy.consolidate(layout.latest_checkpoint(run_dir) / "model")
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_fsdp_two_nodes_one_rank_each_match_two_local_ranks(fsdp_run, tiny_args, strategy_tmp):
    for proc in launch_nodes(2, tiny_args("fsdp_2nodes", **FSDP)):
        assert proc.returncode == 0, proc.stderr[-4000:]
    run_dir = strategy_tmp / "fsdp_2nodes"
    assert step_losses(run_dir) == step_losses(fsdp_run)
    assert layout.read_trainer_state(layout.latest_checkpoint(run_dir))["step"] == 10


def test_stuck_rank_makes_the_job_fail_within_the_collective_timeout(tiny_args):
    """Rank 1 stops at step 3 without dying; rank 0's next collective must time out after
    dist.timeout_s (10 s), and torchrun then ends the job with a non-zero status."""
    args = tiny_args("fsdp_stuck", **FSDP, **{"dist.timeout_s": 10})
    start = time.monotonic()
    proc = launch(
        "torchrun", 2, args, script=FAULT_SCRIPT, check=False, timeout=240,
        env={"FAULT": "hang", "FAULT_STEP": "3", "FAULT_RANK": "1"},
    )  # fmt: skip
    elapsed = time.monotonic() - start
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "FAULT hang on rank 1 at step 3" in output
    assert "Timed out" in output, output[-4000:]
    assert elapsed < 80, elapsed  # start-up + 10 s timeout, with room for a loaded machine


def test_killed_node_makes_every_node_exit_nonzero(tiny_args):
    """Node 1's only rank is SIGKILLed at step 3: node 0's torchrun cannot see that process, so
    its rank must fail in its next collective (peer closed) and exit instead of waiting."""
    args = tiny_args("fsdp_killed", **FSDP, **{"dist.timeout_s": 10})
    start = time.monotonic()
    procs = launch_nodes(
        2, args, script=FAULT_SCRIPT, timeout=240, env={"FAULT": "kill", "FAULT_STEP": "3", "FAULT_RANK": "1"}
    )
    elapsed = time.monotonic() - start
    assert [p.returncode != 0 for p in procs] == [True, True]
    assert "FAULT kill on rank 1 at step 3" in procs[1].stdout + procs[1].stderr
    assert elapsed < 80, elapsed
