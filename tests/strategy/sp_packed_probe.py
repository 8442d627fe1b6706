"""Per-example losses of one packed row through `strategy=fsdp parallel.sp=2`, and of each example
alone through an unsharded copy of the same model; rank 0 writes both as JSON.

`torchrun --nproc_per_node 2 sp_packed_probe.py OUT.json [overrides...]` (e.g. `strategy=zero3`
under `deepspeed --num_gpus 2`). The row packs examples of unequal
length, one of them across the boundary between the two ranks' slices, and padding at the end:
each example's loss (labels kept on that example only) must equal the loss of the example alone,
which holds only if the full-sequence document mask and the sliced position ids are right.
"""

from __future__ import annotations

import copy
import json
import sys

import torch

from llmtrain.config import load_config
from llmtrain.config.load import strip_launcher_args
from llmtrain.dist import all_reduce_sum, init_distributed
from llmtrain.model.build import build_model
from llmtrain.model.loss import IGNORE_INDEX, CausalLMLoss
from llmtrain.strategy import build_strategy

SEQ_LEN, VOCAB = 32, 256
LENGTHS = (5, 14, 6, 3)  # 28 tokens, then 4 of padding; example 1 spans the slice boundary (16)
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
    "strategy=fsdp",
    "parallel.sp=2",
    "trainer.global_batch_size=1",
]


def examples() -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    return [
        (torch.randint(0, VOCAB, (n,), generator=gen), torch.randint(0, VOCAB, (n,), generator=gen))
        for n in LENGTHS
    ]


def packed_row(keep: int) -> dict[str, torch.Tensor]:
    """The examples packed into one row, labels kept on example `keep` only."""
    pad = SEQ_LEN - sum(LENGTHS)
    ids, labels, positions, docs = [], [], [], []
    for i, (x, y) in enumerate(examples()):
        ids.append(x)
        labels.append(y if i == keep else torch.full_like(y, IGNORE_INDEX))
        positions.append(torch.arange(len(x)))
        docs.append(torch.full_like(x, i))
    ids.append(torch.zeros(pad, dtype=torch.long))
    labels.append(torch.full((pad,), IGNORE_INDEX))
    positions.append(torch.zeros(pad, dtype=torch.long))
    docs.append(torch.full((pad,), -1))
    fields = {"input_ids": ids, "labels": labels, "position_ids": positions, "document_ids": docs}
    return {k: torch.cat(v)[None] for k, v in fields.items()}


def main(out: str, overrides: list[str]) -> None:
    dist = init_distributed("cpu", timeout_s=120)
    cfg = load_config([*MODEL, *overrides])
    torch.manual_seed(cfg.trainer.seed)
    module = CausalLMLoss(build_model(cfg.model, VOCAB, dist.device), document_masking=True)
    alone_model = copy.deepcopy(module).eval()  # plain SDPA, unsharded: the reference
    strategy = build_strategy(cfg, dist)
    strategy.setup(module, lambda step: 1.0)
    packed, alone = [], []
    with strategy.eval_mode():
        for i, (x, y) in enumerate(examples()):
            loss = strategy.forward(strategy.local_batch(packed_row(i)))
            packed.append(all_reduce_sum(loss.detach().clone(), strategy.dp_group).item())
            alone.append(alone_model(x[None], y[None]).item())
    if dist.rank == 0:
        with open(out, "w") as f:
            json.dump({"packed": packed, "alone": alone}, f)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    args = strip_launcher_args(sys.argv[1:])
    main(args[0], args[1:])
