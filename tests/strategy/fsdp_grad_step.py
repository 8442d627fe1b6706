"""One global step through `train_step` on a hand-made batch; rank 0 dumps the full gradient.

`fsdp_grad_step.py OUT.pt STRATEGY/MICRO/VARIANT ...` (e.g. `fsdp/1/plain`), alone or under
torchrun: one process computes every spec, so the start-up is paid once. The global batch (GLOBAL
examples, fixed seed) is the same however it is split: rank r takes the r-th contiguous slice, cut
into micro-batches of MICRO. Label counts per example are very unequal, so a loss normalised per
micro-batch or per rank instead of by the global label count gives a visibly different gradient
(tests/strategy/test_single.py checks that).
"""

from __future__ import annotations

import sys

import torch

from llmtrain.config import load_config
from llmtrain.dist import init_distributed
from llmtrain.model.build import build_model
from llmtrain.model.loss import IGNORE_INDEX, CausalLMLoss
from llmtrain.strategy import build_strategy
from llmtrain.train.step import train_step

GLOBAL = 4
SEQ_LEN = 32
VOCAB = 256
# Labels kept per example: one full, three almost empty.
KEEP = (SEQ_LEN, 1, 3, 6)
MODEL = [
    "model.hidden_size=64",
    "model.intermediate_size=128",
    "model.num_layers=2",
    "model.num_heads=4",
    "model.num_kv_heads=2",
    f"model.vocab_size={VOCAB}",
    "model.max_position_embeddings=64",
    f"data.seq_len={SEQ_LEN}",
    "trainer.device=cpu",
]
# Model variants: FSDP must also be exact with HF gradient checkpointing and tied embeddings.
VARIANTS = {
    "plain": [],
    "checkpointing+tied": ["model.gradient_checkpointing=true", "model.tie_word_embeddings=true"],
    # Strategy options that must not change the arithmetic (fsdp only; single ignores them).
    "offload+keep-unsharded": ["strategy.fsdp.cpu_offload=true", "strategy.fsdp.reshard_after_forward=false"],
}


def global_batch() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, VOCAB, (GLOBAL, SEQ_LEN), generator=gen)
    labels = torch.randint(0, VOCAB, (GLOBAL, SEQ_LEN), generator=gen)
    for i, keep in enumerate(KEEP):
        labels[i, keep:] = IGNORE_INDEX
    return {"input_ids": input_ids, "labels": labels}


def full_grads(strategy) -> dict[str, torch.Tensor]:
    """Name → full gradient (sharded DTensor gradients are gathered: collective)."""
    out = {}
    for name, p in strategy.module.named_parameters():
        g = p.grad
        if hasattr(g, "full_tensor"):
            g = g.full_tensor()
        out[name.removeprefix("model.")] = g.detach().clone()
    return out


def grads_of_one_step(dist, strategy_name: str, micro: int, variant: str) -> dict:
    """Run `train_step` once and capture the full gradient just before the optimizer step."""
    cfg = load_config(
        [
            *MODEL,
            *VARIANTS[variant],
            f"strategy={strategy_name}",
            f"trainer.global_batch_size={GLOBAL}",
            f"trainer.micro_batch_size={micro}",
        ]
    )
    torch.manual_seed(cfg.trainer.seed)
    strategy = build_strategy(cfg, dist)
    strategy.setup(CausalLMLoss(build_model(cfg.model, VOCAB, dist.device), False), lambda step: 1.0)
    strategy.train(True)  # as the loop does: HF checkpoints layers only in training mode

    per_rank = GLOBAL // dist.world_size
    mine = {k: v[dist.rank * per_rank : (dist.rank + 1) * per_rank] for k, v in global_batch().items()}
    micro_batches = [{k: v[i : i + micro] for k, v in mine.items()} for i in range(0, per_rank, micro)]
    assert len(micro_batches) == cfg.trainer.grad_accum_for(dist.world_size)

    captured = {}
    step = strategy.step

    def capture_then_step():
        captured.update(full_grads(strategy))
        return step()

    strategy.step = capture_then_step
    result = train_step(strategy, micro_batches)
    return {
        "grads": captured,
        "grad_norm": float(result.result.grad_norm),
        "memory": strategy.memory_report(),  # rank 0's bytes, with optimizer states present
    }


def main(out: str, specs: list[str]) -> None:
    dist = init_distributed("cpu", timeout_s=120)
    dumps = {}
    for spec in specs:
        strategy_name, micro, variant = spec.split("/")
        dumps[spec] = grads_of_one_step(dist, strategy_name, int(micro), variant)
    if dist.rank == 0:
        torch.save(dumps, out)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
