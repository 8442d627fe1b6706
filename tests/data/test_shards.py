from __future__ import annotations

import pickle

import numpy as np
import pytest

from llmtrain.data.shards import TokenShards


@pytest.fixture
def many_shards(make_shards):
    texts = [f"doc {i}: " + "abcdefghij"[: i % 10] * (1 + i % 4) for i in range(80)]
    return make_shards(texts, val_fraction=0.0, shard_tokens=30), texts


def concatenated(shards_dir) -> np.ndarray:
    files = sorted((shards_dir / "train").glob("shard_*.bin"))
    assert len(files) > 10  # the test is only meaningful across many files
    return np.concatenate([np.fromfile(f, dtype=np.uint16) for f in files])


def test_read_across_shard_files_equals_the_concatenation(many_shards):
    shards_dir, _ = many_shards
    full = concatenated(shards_dir)
    s = TokenShards(shards_dir, "train")
    assert s.num_tokens == len(full)
    rng = np.random.default_rng(0)
    for _ in range(300):
        a, b = sorted(rng.integers(0, len(full) + 1, size=2).tolist())
        assert np.array_equal(s.read(a, b), full[a:b])
    assert np.array_equal(s.read(0, len(full)), full)
    assert len(s.read(5, 5)) == 0
    with pytest.raises(IndexError):
        s.read(0, len(full) + 1)


def test_doc_ends_are_global_offsets_of_each_eos(many_shards):
    shards_dir, texts = many_shards
    s = TokenShards(shards_dir, "train")
    assert s.num_docs == len(texts)
    assert s.doc_ends.tolist() == np.cumsum([len(t.encode()) + 1 for t in texts]).tolist()
    stream = s.read(0, s.num_tokens)
    assert (stream[s.doc_ends - 1] == 258).all()


def test_doc_boundaries_in_matches_brute_force(many_shards):
    s = TokenShards(many_shards[0], "train")
    ends = s.doc_ends
    rng = np.random.default_rng(1)
    for _ in range(200):
        a, b = sorted(rng.integers(0, s.num_tokens + 1, size=2).tolist())
        assert s.doc_boundaries_in(a, b).tolist() == ends[(ends > a) & (ends <= b)].tolist()


def test_pickled_shards_reopen_lazily_and_read_the_same(many_shards):
    s = TokenShards(many_shards[0], "train")
    before = s.read(10, 200)
    clone = pickle.loads(pickle.dumps(s))
    assert clone._maps is None  # memory maps are reopened in the new process, not shipped
    assert np.array_equal(clone.read(10, 200), before)
    assert len(pickle.dumps(s)) < 4096


def test_a_truncated_shard_fails_naming_the_file_and_both_sizes(many_shards):
    from llmtrain.data.errors import DataError

    shards_dir, _ = many_shards
    shard = sorted((shards_dir / "train").glob("shard_*.bin"))[3]
    shard.write_bytes(shard.read_bytes()[:-4])
    with pytest.raises(DataError, match=rf"{shard.name} has .* bytes but .*manifest.json says .* truncated"):
        TokenShards(shards_dir, "train")
