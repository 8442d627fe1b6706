"""DeepSpeed ZeRO 1/2/3 reproduces `single` (losses and grad norms), resumes exactly, refuses a
world-size change with instructions, exports to Hugging Face, trains in bf16, skips non-finite
steps untouched, reports sharded memory, runs across two "nodes", and fails in bounded time when a
rank is stuck.

The numeric runs are two CPU ranks over gloo forked by the session's server (tests/forkserver.py)
on the generated corpus, shared between assertions through module fixtures; the real `deepspeed`
launcher runs where it is the subject: the two-node hostfile run, the stuck rank, the one-rank
shared-memory run. The first DeepSpeed launch on a machine
JIT-builds a shared-memory op (~80 s, cached under ~/.cache/torch_extensions).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from launcher import REPO, launch, launch_nodes, read_metrics, step_losses
from test_single import FAULT_SCRIPT
from transformers import AutoModelForCausalLM

from llmtrain.checkpoint import layout
from llmtrain.config import ConfigError, load_config
from llmtrain.dist import DistInfo
from llmtrain.strategy.deepspeed import DeepSpeedStrategy, build_ds_config

PROBE = Path(__file__).resolve().parent / "ds_probe.py"
EXPORT = REPO / "launch" / "export_hf.py"
STEPS = 10  # conftest's tiny runs
N = 5  # steps before the interruption in the resume test

# fp32 on CPU: a ZeRO run differs from the one-process reference only in the order of float sums
# (each rank accumulates its micro-batches, gloo adds the two halves, DeepSpeed reduces flat
# buckets). Measured over 10 steps: <= 1.1e-7 relative on the loss, <= 7e-7 on the grad norm. 1e-5
# leaves margin for other CPUs' kernels, while a gradient off by the dp size or the accumulation
# count (2x on the norm) or a shifted micro-batch order (~1e-2 on the loss) is far outside it.
RTOL = 1e-5


def _rows(run_dir: Path) -> dict[int, dict]:
    return {m["step"]: m for m in read_metrics(run_dir) if "loss" in m}


@pytest.fixture(scope="module")
def ds_run(tiny_args, strategy_tmp):
    """`ds_run(name, **overrides)`: a 2-rank `deepspeed` run in the session folder, launched once."""
    done: dict[str, Path] = {}

    def run(name: str, **extra: object) -> Path:
        if name not in done:
            launch("forked", 2, tiny_args(name, **extra), timeout=300)
            done[name] = strategy_tmp / name
        return done[name]

    return run


@pytest.fixture(scope="module")
def probe(strategy_tmp):
    """`probe(launcher, nproc, *overrides)`: the folder ds_probe.py filled (launched once per args)."""
    done: dict[tuple, Path] = {}

    def run(launcher: str, nproc: int, *overrides: str) -> Path:
        key = (launcher, nproc, *overrides)
        if key not in done:
            out = strategy_tmp / f"ds_probe_{len(done)}"
            launch(launcher, nproc, [str(out), *overrides], script=PROBE, timeout=300)
            done[key] = out
        return done[key]

    return run


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["zero1", "zero2", "zero3"])
def test_two_rank_zero_stage_reproduces_single_process_losses_and_grad_norms(ds_run, single_run, stage):
    ref, got = _rows(single_run), _rows(ds_run(stage, strategy=stage))
    assert sorted(got) == sorted(ref) == list(range(1, STEPS + 1))
    for step in ref:
        # The norm is the sharp check: AdamW is nearly blind to a constant gradient factor, so a
        # wrong dp or accumulation scaling barely moves the loss but moves the norm by that factor.
        for key in ("loss", "grad_norm", "lr"):
            assert got[step][key] == pytest.approx(ref[step][key], rel=RTOL), (step, key)


@pytest.fixture(scope="module")
def zero3_interrupted_at_n(tiny_args, strategy_tmp) -> Path:
    """A 2-rank zero3 run stopped after N steps (its last checkpoint is step N)."""
    launch("forked", 2, tiny_args("zero3_resumed", strategy="zero3", **{"trainer.max_steps": N}))
    # A copy to try resuming on one rank, taken before the 2-rank resume adds checkpoints.
    shutil.copytree(strategy_tmp / "zero3_resumed", strategy_tmp / "zero3_resumed_1rank")
    return strategy_tmp / "zero3_resumed"


@pytest.mark.slow
def test_zero3_resume_continues_with_bitwise_identical_losses(ds_run, zero3_interrupted_at_n, tiny_args):
    full = step_losses(ds_run("zero3", strategy="zero3"))
    launch("forked", 2, tiny_args("zero3_resumed", strategy="zero3"))
    resumed = step_losses(zero3_interrupted_at_n)
    assert sorted(resumed) == list(range(1, STEPS + 1)), "every step logged exactly once"
    # Same data order, RNG, fp32 master partitions, AdamW moments and schedule position: the same
    # arithmetic in the same order, so equality is exact.
    later = range(N + 1, STEPS + 1)
    assert {s: resumed[s] for s in later} == {s: full[s] for s in later}


@pytest.mark.slow
def test_zero3_checkpoint_on_another_world_size_fails_saying_how_to_convert(
    zero3_interrupted_at_n, tiny_args
):
    proc = launch("forked", 1, tiny_args("zero3_resumed_1rank", strategy="zero3"), check=False, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "written by 2 zero3 ranks, this run has 1" in output, output[-4000:]
    assert "launch/export_hf.py" in output and "model.pretrained=" in output


@pytest.mark.slow
def test_export_from_zero3_checkpoint_reproduces_the_trained_models_logits(probe, tmp_path):
    out = probe("forked", 2, "strategy=zero3")
    hf = tmp_path / "hf"
    launch("forked", 1, [str(out / "run"), str(hf)], script=EXPORT)
    exported = AutoModelForCausalLM.from_pretrained(hf).eval()
    assert exported.config.tie_word_embeddings, "the probe ties embeddings: shared weights must survive"
    # Two independent consolidations agree exactly: zero_to_fp32 reading the partitions from disk,
    # and full_state_dict() gathering the live fp32 masters on the ranks.
    live = torch.load(out / "full_state.pt")
    exported_sd = exported.state_dict()
    assert sorted(live) == sorted(exported_sd)
    for name, tensor in live.items():
        assert torch.equal(exported_sd[name], tensor), name
    # And the exported model computes what the trained ZeRO-3 engine computed.
    probe_out = torch.load(out / "probe.pt")
    with torch.no_grad():
        logits = exported(probe_out["input_ids"]).logits
    torch.testing.assert_close(logits, probe_out["logits"], rtol=1e-5, atol=1e-5)
    # Not vacuous: training moved the weights away from the initialisation.
    fresh = AutoModelForCausalLM.from_config(exported.config)
    with torch.no_grad():
        assert (fresh(probe_out["input_ids"]).logits - logits).abs().max() > 1e-3


@pytest.mark.slow
def test_zero3_memory_report_holds_half_of_params_grads_and_optimizer_per_rank(probe):
    out = probe("forked", 2, "strategy=zero3")
    numel = sum(t.numel() for n, t in torch.load(out / "full_state.pt").items() if n != "lm_head.weight")
    # What one DeepSpeed process holds in fp32 with AdamW: weights, gradients, and in the optimizer
    # an fp32 master copy plus two moments (single holds no separate master: 8 bytes there).
    # ZeRO-3's partitions are padded to a multiple of the world size, hence the slack.
    whole = {"param_bytes": 4 * numel, "grad_bytes": 4 * numel, "optimizer_bytes": 12 * numel}
    for rank in (0, 1):
        report = json.loads((out / f"memory_rank{rank}.json").read_text())
        for key, total in whole.items():
            assert report[key] == pytest.approx(total / 2, rel=1e-3), (rank, key, report[key], total)


@pytest.mark.slow
@pytest.mark.parametrize(
    "launcher,nproc,precision",
    [("forked", 2, "fp32"), ("forked", 1, "bf16")],
    ids=["fp32-2ranks", "bf16-1rank"],
)
def test_zero3_nonfinite_step_is_skipped_without_touching_weights_or_schedule(
    probe, launcher, nproc, precision
):
    out = probe(launcher, nproc, "strategy=zero3", f"trainer.precision={precision}")
    report = json.loads((out / "nonfinite.json").read_text())
    assert report["skipped"] and not torch.isfinite(torch.tensor(report["grad_norm"]))
    assert report["weights_unchanged"], "fp32 masters moved"
    assert report["logits_unchanged"], f"{precision} working weights moved"
    assert report["lr_after"] == report["lr_before"], "the schedule advanced on a skipped step"
    assert report["next_loss_finite"]


@pytest.mark.slow
def test_zero3_trains_in_bf16_with_finite_falling_loss(ds_run):
    rows = _rows(ds_run("zero3_bf16", strategy="zero3", **{"trainer.precision": "bf16"}))
    losses = [rows[s]["loss"] for s in sorted(rows)]
    assert len(losses) == STEPS and all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0] - 0.5, losses
    assert all(rows[s]["skipped_steps"] == 0 for s in rows)


@pytest.mark.slow
def test_zero2_two_nodes_one_rank_each_with_hostfile_match_single_and_save(
    single_run, tiny_args, strategy_tmp
):
    for proc in launch_nodes(2, tiny_args("zero2_2nodes", strategy="zero2"), launcher="deepspeed"):
        assert proc.returncode == 0, proc.stderr[-4000:]
    run_dir = strategy_tmp / "zero2_2nodes"
    ref, got = step_losses(single_run), step_losses(run_dir)
    assert sorted(got) == sorted(ref)
    assert all(got[s] == pytest.approx(ref[s], rel=RTOL) for s in ref)
    ckpt = layout.latest_checkpoint(run_dir)
    assert layout.read_trainer_state(ckpt)["world_size"] == 2
    assert sorted(p.name for p in (ckpt / "model" / "zero").glob("*optim_states.pt")) == [
        "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "zero_pp_rank_1_mp_rank_00_optim_states.pt",
    ]


@pytest.mark.slow
def test_stuck_rank_makes_the_deepspeed_job_fail_within_the_collective_timeout(tiny_args):
    """Rank 1 stops at step 3 without dying; rank 0's next collective must time out after
    dist.timeout_s, and the launcher then takes the stuck rank down with it."""
    args = tiny_args("zero3_stuck", strategy="zero3", **{"dist.timeout_s": 10})
    start = time.monotonic()
    proc = launch(
        "deepspeed", 2, args, script=FAULT_SCRIPT, check=False, timeout=240,
        env={"FAULT": "hang", "FAULT_STEP": "3", "FAULT_RANK": "1"},
    )  # fmt: skip
    elapsed = time.monotonic() - start
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "FAULT hang on rank 1 at step 3" in output
    assert "Timed out" in output, output[-4000:]
    assert elapsed < 120, elapsed


def test_fp16_on_an_accelerator_without_fp16_is_a_config_error():
    """DeepSpeed's CPU accelerator refuses fp16 deep inside engine setup; we say so up front. The
    fp16 path (dynamic loss scaling, overflow skips) is exercised only on GPU."""
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().is_fp16_supported():
        pytest.skip(f"this {get_accelerator().device_name()} accelerator supports fp16")
    cfg = load_config(["strategy=zero2", "trainer.precision=fp16"])
    with pytest.raises(ConfigError, match="trainer.precision=fp16.*use trainer.precision=bf16"):
        DeepSpeedStrategy(cfg, DistInfo(0, 1, 0, torch.device("cpu")))


def test_ds_config_is_generated_from_our_keys_and_strategy_ds_config_merges_over_it():
    cfg = load_config(
        [
            "strategy=zero3_offload",
            "trainer.global_batch_size=32",
            "trainer.micro_batch_size=4",
            "trainer.grad_clip=0.5",
            "trainer.precision=bf16",
            "+strategy.deepspeed.config.zero_optimization.stage3_max_live_parameters=1000",
            "+strategy.deepspeed.config.steps_per_print=7",
        ]
    )
    ds = build_ds_config(cfg, dp_size=2, device=torch.device("cpu"))
    assert (
        ds["train_batch_size"],
        ds["train_micro_batch_size_per_gpu"],
        ds["gradient_accumulation_steps"],
    ) == (
        32,
        4,
        4,
    )
    assert ds["gradient_clipping"] == 0.5
    assert ds["bf16"] == {"enabled": True} and ds["fp16"]["enabled"] is False
    zero = ds["zero_optimization"]
    assert zero["stage"] == 3 and zero["stage3_max_live_parameters"] == 1000, "merged, not replaced"
    assert zero["offload_optimizer"] == {"device": "cpu", "pin_memory": False}
    assert zero["offload_param"] == {"device": "cpu", "pin_memory": False}
    assert ds["steps_per_print"] == 7


def test_zero_stage_key_contradicting_the_strategy_name_is_a_config_error():
    with pytest.raises(ConfigError, match="strategy.deepspeed.zero_stage=3 contradicts strategy.name=zero2"):
        load_config(["strategy=zero2", "strategy.deepspeed.zero_stage=3"])


@pytest.mark.slow
def test_a_one_rank_deepspeed_launch_leaves_no_shared_memory_buffer(tiny_args):
    """The deepspeed launcher with one rank also maps a 66 MB /dev/shm segment; it used to be left
    behind (the unlink skipped world size 1). `launch` asserts none is left after every DeepSpeed run."""
    launch("deepspeed", 1, tiny_args("zero2_one_rank", strategy="zero2", **{"trainer.max_steps": 2}))
