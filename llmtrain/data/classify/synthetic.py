"""A generated three-class topic set, so `+exp=classify` runs with no file and no network.

Each text is filler words with a few words of its topic mixed in; a small share of texts carry a
word of another topic too, so the task is learnable but not trivially perfect. Classes are
unbalanced (50/30/20) so class weights and macro averages have something to do.
"""

from __future__ import annotations

import random

# Bump when the generated texts change (part of the cache key).
GENERATOR_VERSION = 1

TOPICS = {
    "sports": ["goal", "match", "team", "coach", "score", "league", "player", "referee"],
    "weather": ["rain", "cloud", "storm", "sunny", "wind", "snow", "forecast", "humid"],
    "food": ["bread", "soup", "spicy", "dinner", "recipe", "salad", "cheese", "bake"],
}
SHARES = {"sports": 0.5, "weather": 0.3, "food": 0.2}
FILLER = [
    "the",
    "a",
    "today",
    "we",
    "it",
    "was",
    "very",
    "quite",
    "and",
    "then",
    "so",
    "after",
    "before",
    "our",
    "their",
    "new",
    "old",
    "big",
    "small",
]


def generate_examples(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """`n` (text, label) pairs, the same for the same seed."""
    rng = random.Random(seed)
    labels = list(SHARES)
    out = []
    for _ in range(n):
        label = rng.choices(labels, weights=[SHARES[x] for x in labels])[0]
        words = [rng.choice(FILLER) for _ in range(rng.randint(6, 14))]
        for _ in range(rng.randint(1, 2)):
            words.insert(rng.randrange(len(words) + 1), rng.choice(TOPICS[label]))
        if rng.random() < 0.1:
            other = rng.choice([x for x in labels if x != label])
            words.insert(rng.randrange(len(words) + 1), rng.choice(TOPICS[other]))
        out.append((" ".join(words), label))
    return out
