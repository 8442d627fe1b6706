"""Generations for a fixed list of prompts at every evaluation, logged beside the validation loss.

Greedy decoding through `Strategy.forward` with `labels=None` (logits), so FSDP2 and ZeRO-3 gather
their sharded weights in the same hooks as in training. Sharded engines need every rank in every
forward; ranks agree after each token whether anyone is still generating (the analogue of HF
`generate(synced_gpus=True)`), so they run the same number of forwards.
"""

from __future__ import annotations

from typing import Any

import torch

from llmtrain.config import TrainConfig
from llmtrain.data import chat_template
from llmtrain.dist import all_reduce_max
from llmtrain.generate import decode_reply, greedy_decode, prompt_ids
from llmtrain.strategy.base import Strategy


class PromptSampler:
    """`trainer.sample_prompts` tokenized once (with the chat template for SFT)."""

    def __init__(self, cfg: TrainConfig, tokenizer: Any) -> None:
        template = chat_template(cfg.data, tokenizer)
        self.tokenizer = tokenizer
        self.prompts = list(cfg.trainer.sample_prompts)
        self.prompt_ids = [prompt_ids(template, tokenizer, p) for p in self.prompts]
        self.stop_ids = template.stop_token_ids(tokenizer) if template else [tokenizer.eos_token_id]
        self.max_new_tokens = cfg.trainer.sample_max_new_tokens

    def __call__(self, strategy: Strategy) -> list[dict[str, str]]:
        device = strategy.dist.device

        def logits(ids: torch.Tensor) -> torch.Tensor:
            return strategy.forward({"input_ids": ids, "labels": None})

        def any_running(running: bool) -> bool:
            return all_reduce_max(torch.tensor(float(running), device=device)).item() > 0

        rows = []
        with strategy.eval_mode():
            for prompt, ids in zip(self.prompts, self.prompt_ids, strict=True):
                out = greedy_decode(logits, ids, self.max_new_tokens, self.stop_ids, device, any_running)
                rows.append(
                    {"prompt": prompt, "completion": decode_reply(self.tokenizer, out, self.stop_ids)}
                )
        return rows
