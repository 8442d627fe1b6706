"""SFT validation metrics read from the replies of held-out examples, two `Evaluator` metric functions:

- `GeneratedAnswers` (`trainer.eval_generate=N`): greedily answer the first N validation examples'
  prompts and score the answers against the references: exact match, BLEU, ROUGE-L.
- `ChoiceScores` (`data.choices=[...]`): the replies are label words; each validation example is
  scored by the log-likelihood of every choice given its prompt, the argmax is the prediction, and
  accuracy/precision/recall/F1 come from `llmtrain.metrics.classification` as for a classifier.

Both run every forward on every rank with the same inputs (sharded engines need all ranks in each
forward; the same is done for the evaluation samples), and rank 0 logs. The prompt of an example is
everything before its last reply, the exact ids training saw (`ChatTemplate.encode_prompt` makes
the same prefix), so a multi-turn example is answered with its history.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from llmtrain.config import TrainConfig
from llmtrain.data import Reply, chat_template, held_out_replies
from llmtrain.data.errors import DataError
from llmtrain.dist import all_reduce_max
from llmtrain.generate import decode_reply, greedy_decode
from llmtrain.metrics.classification import classification_metrics
from llmtrain.metrics.generation import generation_metrics
from llmtrain.strategy.base import Strategy
from llmtrain.tracking.tracker import Tracker
from llmtrain.train.state import TrainState

log = logging.getLogger("llmtrain")

# `samples.jsonl` keys of the logged rows (one per example and evaluation).
GENERATIONS_KEY = "eval_generate"
CHOICES_KEY = "choices"


def _stop_ids(cfg: TrainConfig, tokenizer: Any) -> list[int]:
    template = chat_template(cfg.data, tokenizer)
    return template.stop_token_ids(tokenizer) if template else [tokenizer.eos_token_id]


class GeneratedAnswers:
    """Greedy answers to the first `trainer.eval_generate` validation prompts, scored."""

    def __init__(self, cfg: TrainConfig, tokenizer: Any, shards_dir: Path, tracker: Tracker) -> None:
        self.tokenizer, self.tracker = tokenizer, tracker
        self.stop_ids = _stop_ids(cfg, tokenizer)
        self.replies = held_out_replies(cfg.data, shards_dir, cfg.trainer.eval_generate)
        if len(self.replies) < cfg.trainer.eval_generate:
            log.warning(
                "trainer.eval_generate=%d but the validation split has %d examples: generating for all of them",
                cfg.trainer.eval_generate,
                len(self.replies),
            )
        self.references = [decode_reply(tokenizer, r.reply_ids, self.stop_ids) for r in self.replies]
        longest = max((len(r.reply_ids) for r in self.replies), default=1)
        self.max_new_tokens = cfg.trainer.eval_generate_max_new_tokens or longest

    def __call__(self, strategy: Strategy, state: TrainState) -> dict[str, float]:
        if not self.replies:
            return {}
        device = strategy.dist.device

        def logits(ids: torch.Tensor) -> torch.Tensor:
            return strategy.forward({"input_ids": ids, "labels": None})

        def any_running(running: bool) -> bool:
            return all_reduce_max(torch.tensor(float(running), device=device)).item() > 0

        predictions = []
        with strategy.eval_mode():
            for reply in self.replies:
                out = greedy_decode(
                    logits, reply.prompt_ids, self.max_new_tokens, self.stop_ids, device, any_running
                )
                predictions.append(decode_reply(self.tokenizer, out, self.stop_ids))
        rows = [
            {
                "index": r.index,
                "prompt": self.tokenizer.decode(r.prompt_ids),
                "completion": pred,
                "reference": ref,
            }
            for r, pred, ref in zip(self.replies, predictions, self.references)
        ]
        self.tracker.log_samples(state.step, rows, key=GENERATIONS_KEY)
        return generation_metrics(predictions, self.references)


class ChoiceScores:
    """Each validation example's reply is one of `data.choices`; predict the likeliest choice.

    A choice's score is the *sum* of the log-probabilities of its reply tokens, end token included:
    the log-likelihood of the model producing exactly that complete reply, so the argmax is the
    complete reply the model finds most likely. A per-token mean would favour long choices whose
    later tokens are nearly certain once the first is chosen (`negative` after `neg`), and the end
    token keeps a choice that is a prefix of another from scoring higher for being shorter.

    A choice's token ids are those training used: the reply of the first example (validation, then
    training split) whose reply is that choice, so they are the ids in context, not the word
    tokenized alone (sentencepiece tokenizes a word at the start of a text differently).
    """

    def __init__(self, cfg: TrainConfig, tokenizer: Any, shards_dir: Path, tracker: Tracker) -> None:
        self.choices = list(cfg.data.choices)
        self.tracker = tracker
        stop_ids = _stop_ids(cfg, tokenizer)
        limit = cfg.trainer.eval_batches * cfg.trainer.global_batch_size  # the validation loss's set
        self.replies = held_out_replies(cfg.data, shards_dir, limit)
        where = Path(shards_dir) / "val"
        self.gold = [
            self._label(decode_reply(tokenizer, r.reply_ids, stop_ids), r, where) for r in self.replies
        ]
        self.choice_ids: dict[int, list[int]] = {}
        for label, r in zip(self.gold, self.replies):
            self.choice_ids.setdefault(label, r.reply_ids)
        if len(self.choice_ids) < len(self.choices):
            for r in held_out_replies(cfg.data, shards_dir, split="train"):
                text = decode_reply(tokenizer, r.reply_ids, stop_ids).strip()
                if text in self.choices:
                    self.choice_ids.setdefault(self.choices.index(text), r.reply_ids)
        missing = [c for i, c in enumerate(self.choices) if i not in self.choice_ids]
        if missing:
            raise DataError(
                f"data.choices: {missing} is the reply of no example in {shards_dir} (validation or "
                "training split); list only the label words the data's replies use"
            )

    def _label(self, text: str, reply: Reply, where: Path) -> int:
        text = text.strip()
        if text not in self.choices:
            raise DataError(
                f"{where} example {reply.index}: reply {text!r} is not one of data.choices={self.choices}"
            )
        return self.choices.index(text)

    def scores(self, strategy: Strategy, reply: Reply) -> list[float]:
        """Summed log-probability of each choice's reply after `reply`'s prompt (one forward: the
        choices right-padded in one batch; causal attention keeps padding out of earlier positions)."""
        device = strategy.dist.device
        prompt = reply.prompt_ids
        seqs = [prompt + self.choice_ids[i] for i in range(len(self.choices))]
        width = max(len(s) for s in seqs)
        ids = torch.tensor([s + [s[-1]] * (width - len(s)) for s in seqs], device=device)
        logprobs = torch.log_softmax(strategy.forward({"input_ids": ids, "labels": None}).float(), dim=-1)
        out = []
        for i in range(len(self.choices)):
            target = torch.tensor(self.choice_ids[i], device=device)
            # The logits at position t predict token t + 1.
            positions = torch.arange(len(prompt) - 1, len(prompt) - 1 + len(target), device=device)
            out.append(float(logprobs[i, positions, target].sum()))
        return out

    def __call__(self, strategy: Strategy, state: TrainState) -> dict[str, float]:
        if not self.replies:
            return {}
        with strategy.eval_mode():
            scores = [self.scores(strategy, r) for r in self.replies]
        pred = [max(range(len(s)), key=s.__getitem__) for s in scores]
        rows = [
            {"index": r.index, "gold": self.choices[g], "predicted": self.choices[p], "scores": s}
            for r, g, p, s in zip(self.replies, self.gold, pred, scores)
        ]
        self.tracker.log_samples(state.step, rows, key=CHOICES_KEY)
        return classification_metrics(self.gold, pred, self.choices)
