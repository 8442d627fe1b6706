from __future__ import annotations

import re

from llmtrain.data.pretrain.synthetic import generate_documents


def test_same_seed_same_corpus_other_seed_other_corpus():
    assert list(generate_documents(50, 1)) == list(generate_documents(50, 1))
    assert list(generate_documents(50, 1)) != list(generate_documents(50, 2))


def test_documents_are_a_few_sentences_long():
    lengths = [len(d) for d in generate_documents(2000, 0)]
    assert min(lengths) >= 100 and max(lengths) <= 1500
    assert 500 < sum(lengths) / len(lengths) < 900


def test_arithmetic_facts_are_correct():
    facts = re.findall(r"(\d+) ([+-]) (\d+) = (\d+)\.", "\n".join(generate_documents(300, 0)))
    assert len(facts) > 1000
    for a, op, b, c in facts:
        assert int(c) == (int(a) + int(b) if op == "+" else int(a) - int(b))
