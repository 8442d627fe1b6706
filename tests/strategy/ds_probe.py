"""Train a few steps through the DeepSpeed strategy, then dump what tests/strategy/test_deepspeed.py
compares: `ds_probe.py OUT_DIR [overrides...]`, alone (`python`, a 1-rank group) or under `deepspeed`.

Writes, from rank 0 unless noted:
    run/checkpoints/step_N/   a real checkpoint (`save_checkpoint`), for `launch/export_hf.py`
    full_state.pt             `strategy.full_state_dict()` after training (gathered live, fp32)
    probe.pt                  a fixed batch and the trained engine's logits on it
    memory_rank{r}.json       `strategy.memory_report()` of every rank
    nonfinite.json            one step whose loss is NaN: was it reported skipped, did the weights,
                              the working weights (logits), the learning rate move, is the next loss finite?
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from llmtrain.checkpoint.io import save_checkpoint
from llmtrain.config import load_config
from llmtrain.config.load import strip_launcher_args
from llmtrain.dist import init_distributed
from llmtrain.train.setup import build_model_and_strategy
from llmtrain.train.step import train_step

VOCAB = 256
SEQ_LEN = 32
STEPS = 3


def batches(step: int, rank: int, count: int, micro: int) -> list[dict[str, torch.Tensor]]:
    """This rank's micro-batches of `step`: random tokens, a distinct stream per (step, rank)."""
    gen = torch.Generator().manual_seed(1000 * step + rank)
    out = []
    for _ in range(count):
        ids = torch.randint(0, VOCAB, (micro, SEQ_LEN + 1), generator=gen)
        out.append({"input_ids": ids[:, :-1], "labels": ids[:, 1:]})
    return out


def main(out: Path, overrides: list[str]) -> None:
    cfg = load_config(
        [
            "model.hidden_size=64",
            "model.intermediate_size=128",
            "model.num_layers=2",
            "model.num_heads=4",
            "model.num_kv_heads=2",
            f"model.vocab_size={VOCAB}",
            "model.max_position_embeddings=64",
            "model.tie_word_embeddings=true",
            f"data.seq_len={SEQ_LEN}",
            "trainer.device=cpu",
            "trainer.global_batch_size=8",
            "trainer.micro_batch_size=2",
            "sched.name=constant",
            "sched.warmup_steps=0",
            f"run.dir={out / 'run'}",
            *overrides,
        ]
    )
    dist = init_distributed("cpu", cfg.dist.timeout_s)
    strategy = build_model_and_strategy(cfg, dist, VOCAB)
    strategy.train(True)
    accum = cfg.trainer.grad_accum_for(dist.world_size)
    micro = cfg.trainer.micro_batch_size

    losses = []
    for step in range(STEPS):
        result = train_step(strategy, batches(step, dist.rank, accum, micro))
        losses.append(float(result.loss_sum))
    save_checkpoint(out / "run", strategy, {"step": STEPS, "tokens": 0}, cfg, finite=True)
    full = strategy.full_state_dict()

    probe_ids = torch.randint(0, VOCAB, (2, SEQ_LEN), generator=torch.Generator().manual_seed(7))
    with strategy.eval_mode():
        # labels=None: logits through the engine, gathering ZeRO-3 weights as in training.
        logits = strategy.forward({"input_ids": probe_ids, "labels": None})
    (out / f"memory_rank{dist.rank}.json").write_text(json.dumps(strategy.memory_report()))

    # A step whose every gradient is NaN must change nothing.
    lr_before = strategy.lr()
    nan_batches = batches(STEPS, dist.rank, accum, micro)
    for i, mb in enumerate(nan_batches):
        loss = strategy.forward(mb)
        strategy.backward(loss * float("nan"), is_last_micro=i == accum - 1)
    nan_result = strategy.step()
    after = strategy.full_state_dict()
    with strategy.eval_mode():
        logits_after = strategy.forward({"input_ids": probe_ids, "labels": None})
    next_loss = float(train_step(strategy, nan_batches).loss_sum)
    if dist.is_main:
        torch.save(full, out / "full_state.pt")
        torch.save({"input_ids": probe_ids, "logits": logits.detach().float()}, out / "probe.pt")
        unchanged = all(torch.equal(full[k], after[k]) for k in full)
        report = {
            "losses": losses,
            "skipped": bool(nan_result.skipped),
            "grad_norm": float(nan_result.grad_norm),
            "weights_unchanged": unchanged,
            "logits_unchanged": torch.equal(logits, logits_after),
            "lr_before": lr_before,
            "lr_after": strategy.lr(),
            "next_loss_finite": bool(torch.isfinite(torch.tensor(next_loss))),
        }
        (out / "nonfinite.json").write_text(json.dumps(report))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    # The deepspeed launcher puts `--local_rank=N` first; drop it as launch/train.py does.
    argv = strip_launcher_args(sys.argv[1:])
    main(Path(argv[0]), argv[1:])
