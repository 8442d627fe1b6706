"""A generated instruction set (arithmetic and word tasks) so `+exp=sft` runs offline with no files.

The tasks have short, exactly determined answers, so even a tiny random-init model visibly learns
them within a few hundred steps, and a falling validation loss on held-out questions means the
pipeline (template, label mask, packing) works. Rows are in the OpenAI `messages` format and go
through the same normalisation as real data. Some are multi-turn and some carry a system message,
to exercise every masking path.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

GENERATOR_VERSION = 1
_WORDS = [
    "apple",
    "river",
    "stone",
    "cloud",
    "garden",
    "window",
    "silver",
    "orange",
    "planet",
    "candle",
    "forest",
    "mirror",
    "pencil",
    "rocket",
    "button",
    "winter",
    "tiger",
    "basket",
    "ladder",
    "yellow",
    "castle",
    "dragon",
    "marble",
    "violin",
    "pepper",
    "summer",
    "rabbit",
]


def _task(rng: random.Random) -> tuple[str, str]:
    kind = rng.randrange(6)
    if kind == 0:
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        return f"What is {a} + {b}?", f"{a} + {b} = {a + b}."
    if kind == 1:
        a, b = rng.randint(10, 99), rng.randint(0, 9)
        return f"What is {a} - {b}?", f"{a} - {b} = {a - b}."
    if kind == 2:
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        return f"Multiply {a} by {b}.", f"{a} times {b} is {a * b}."
    word = rng.choice(_WORDS)
    if kind == 3:
        return f"Reverse the word '{word}'.", word[::-1]
    if kind == 4:
        return f"Spell '{word}' letter by letter.", "-".join(word)
    return f"How many letters are in '{word}'?", f"'{word}' has {len(word)} letters."


def generate_conversations(n: int, seed: int) -> Iterator[dict[str, Any]]:
    """`n` rows `{"messages": [...]}`; the same (n, seed) always gives the same rows."""
    rng = random.Random(seed)
    for _ in range(n):
        messages: list[dict[str, str]] = []
        if rng.random() < 0.2:
            messages.append({"role": "system", "content": "You are a precise assistant. Answer briefly."})
        for _ in range(1 if rng.random() < 0.7 else rng.randint(2, 3)):
            question, answer = _task(rng)
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        yield {"messages": messages}
