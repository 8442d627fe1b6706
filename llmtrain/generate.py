"""Greedy replies to chat prompts, tokenized by the same chat template as training.

Two callers: evaluation samples during training (`llmtrain.train.samples`, through the strategy so
sharded weights are gathered) and `launch/generate.py` (an exported HF folder, with HF `generate`
and its KV cache). Both build prompt ids with `ChatTemplate.encode_prompt`, the exact prefix the
model saw before every reply in training.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from llmtrain.data.sft.chat_templates import ChatTemplate, load_chat_settings
from llmtrain.data.sft.formats import Conversation, Message


def prompt_ids(template: ChatTemplate | None, tokenizer: Any, prompt: str) -> list[int]:
    """A user message as the model saw prompts in SFT; raw text (after bos) without a template."""
    if template is None:
        bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        return bos + tokenizer(prompt, add_special_tokens=False).input_ids
    return template.encode_prompt(Conversation((Message("user", prompt),)))


def greedy_decode(
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    prompt: Sequence[int],
    max_new_tokens: int,
    stop_ids: Sequence[int],
    device: torch.device,
    any_running: Callable[[bool], bool] = lambda running: running,
) -> list[int]:
    """New token ids (the stop token included when reached), one full forward per token.

    `any_running` lets sharded callers keep every rank in every forward: a rank that has finished
    keeps calling `logits_fn` while any other rank still runs (its extra tokens are discarded).
    """
    ids = torch.tensor([list(prompt)], dtype=torch.long, device=device)
    out: list[int] = []
    for _ in range(max_new_tokens):
        running = not out or out[-1] not in stop_ids
        if not any_running(running):
            break
        next_id = int(logits_fn(ids)[0, -1].argmax())
        if running:
            out.append(next_id)
        ids = torch.cat([ids, torch.tensor([[next_id]], device=device)], dim=1)
    return out


def decode_reply(tokenizer: Any, ids: Sequence[int], stop_ids: Sequence[int]) -> str:
    """The reply text: up to the first stop token, special tokens removed."""
    cut = next((i for i, t in enumerate(ids) if t in stop_ids), len(ids))
    return tokenizer.decode(list(ids[:cut]), skip_special_tokens=True)


def load_for_generation(model_dir: Path, device: torch.device) -> tuple[Any, Any]:
    """(model, tokenizer) from an HF folder or a peft adapter folder whose base is a local folder."""
    from transformers import AutoModelForCausalLM

    from llmtrain.data.tokenizer.load import load_tokenizer

    model_dir = Path(model_dir)
    if (model_dir / "adapter_config.json").is_file():
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True)
    else:
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True)
    return model.to(device).eval(), load_tokenizer(str(model_dir))


def run_generate(
    model_dir: Path,
    prompts: Sequence[str],
    chat_template: str | None = None,
    system_prompt: str | None = None,
    max_new_tokens: int = 128,
    device: str = "auto",
) -> list[tuple[str, str]]:
    """(prompt, reply) for each prompt: `launch/generate.py`'s whole job."""
    from llmtrain.data.sft.chat_templates import resolve_chat_template
    from llmtrain.dist import pick_device

    dev = pick_device(device, 0)
    model, tokenizer = load_for_generation(model_dir, dev)
    settings = load_chat_settings(model_dir) or {"chat_template": "auto", "system_prompt": None}
    name = chat_template or settings["chat_template"]
    system = system_prompt if system_prompt is not None else settings["system_prompt"]
    template = None if name == "none" else resolve_chat_template(name, tokenizer, system)
    stop = template.stop_token_ids(tokenizer) if template else [tokenizer.eos_token_id]
    out = []
    with torch.no_grad():
        for prompt in prompts:
            ids = torch.tensor([prompt_ids(template, tokenizer, prompt)], device=dev)
            gen = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=stop,
                pad_token_id=tokenizer.pad_token_id,
            )
            out.append((prompt, decode_reply(tokenizer, gen[0, ids.shape[1] :].tolist(), stop)))
    return out
