"""A generated corpus with structure a tiny model learns in a few hundred steps.

`python launch/train.py` must work with no files and no network, and its loss curve must say
something: a corpus of random bytes would not go down, real text would not be available. So the
documents mix three kinds of regularity a small byte-level model picks up at different speeds:

- sentences from a small grammar (fixed vocabulary, agreement, punctuation): learned first;
- fixed facts ("The capital of Norland is Vell.") repeated across documents: memorisation;
- arithmetic ("17 + 25 = 42."): the answer is a function of the question.

Pure Python with `random.Random(seed)`, so the corpus is identical on every machine and version.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

# Bump when the generator's output changes: it is part of the shard cache key.
GENERATOR_VERSION = 1

_NAMES = ("Ada", "Bram", "Cleo", "Dario", "Edda", "Finn", "Greta", "Hugo", "Ines", "Jonas", "Kira", "Lev")
_ANIMALS = ("cat", "dog", "fox", "owl", "horse", "rabbit", "crow", "goat", "bear", "wolf")
_THINGS = ("lamp", "book", "cup", "key", "coat", "basket", "letter", "ladder", "drum", "map")
_ADJECTIVES = ("small", "old", "red", "quiet", "bright", "heavy", "green", "clever", "tired", "happy")
_PLACES = ("garden", "kitchen", "river", "market", "forest", "harbour", "library", "field", "tower", "bridge")
_VERBS = (("sees", "saw"), ("finds", "found"), ("carries", "carried"), ("wants", "wanted"), ("hides", "hid"))
_TIMES = ("In the morning", "At noon", "In the evening", "At night", "Yesterday", "Later")
_COUNTRIES = {
    "Norland": "Vell",
    "Estria": "Paros",
    "Quenmark": "Ilden",
    "Sorvia": "Tamsk",
    "Ardenne": "Lume",
    "Kelport": "Brask",
    "Mirova": "Castel",
    "Ostreva": "Dunmore",
}
_COLORS = {"sky": "blue", "grass": "green", "snow": "white", "coal": "black", "blood": "red", "sun": "yellow"}
_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def generate_documents(num_docs: int, seed: int) -> Iterator[str]:
    """`num_docs` documents of a few sentences each (about 100 to 1500 characters), deterministic in `seed`."""
    rng = random.Random(seed)
    for _ in range(num_docs):
        kind = rng.random()
        if kind < 0.45:
            yield _story(rng)
        elif kind < 0.75:
            yield _arithmetic(rng)
        else:
            yield _facts(rng)


def _story(rng: random.Random) -> str:
    hero = rng.choice(_NAMES)
    sentences = [f"{hero} lives near the {rng.choice(_PLACES)}."]
    for _ in range(rng.randint(3, 28)):
        verb_now, verb_past = rng.choice(_VERBS)
        obj = f"the {rng.choice(_ADJECTIVES)} {rng.choice(_ANIMALS + _THINGS)}"
        form = rng.random()
        if form < 0.4:
            sentences.append(f"{rng.choice(_TIMES)}, {hero} {verb_past} {obj} in the {rng.choice(_PLACES)}.")
        elif form < 0.7:
            sentences.append(f"Every day {hero} {verb_now} {obj}.")
        elif form < 0.85:
            n = rng.randint(2, 10)
            sentences.append(f"{hero} counts {_NUMBER_WORDS[n]} {rng.choice(_ANIMALS)}s: {_counting(n)}.")
        else:
            sentences.append(f'"Where is {obj}?" asks {rng.choice(_NAMES)}.')
    return " ".join(sentences)


def _counting(n: int) -> str:
    return ", ".join(_NUMBER_WORDS[1 : n + 1])


def _arithmetic(rng: random.Random) -> str:
    lines = []
    for _ in range(rng.randint(8, 90)):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        if rng.random() < 0.6:
            lines.append(f"{a} + {b} = {a + b}.")
        else:
            a, b = max(a, b), min(a, b)
            lines.append(f"{a} - {b} = {a - b}.")
    return "\n".join(lines)


def _facts(rng: random.Random) -> str:
    sentences = []
    for _ in range(rng.randint(4, 36)):
        if rng.random() < 0.6:
            country = rng.choice(sorted(_COUNTRIES))
            sentences.append(f"The capital of {country} is {_COUNTRIES[country]}.")
        else:
            thing = rng.choice(sorted(_COLORS))
            sentences.append(f"The color of the {thing} is {_COLORS[thing]}.")
    return " ".join(sentences)
