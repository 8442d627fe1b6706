"""Data mixtures (`data.sources`): token shares follow the weights per block of steps, batches are
the same after a resume and at another world size, `max_epochs` drops a source after its passes,
each source is cached on its own, and bad source lists fail naming the source and key."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from llmtrain.config import ConfigError, load_config
from llmtrain.data import ensure_prepared
from llmtrain.data.errors import DataError
from llmtrain.data.loader import build_train_loader
from llmtrain.data.mixture_sampler import MixtureSampler, MixtureSource, largest_remainder
from llmtrain.data.pretrain.mixture import mixture_train
from llmtrain.data.sampler import GlobalBatchSampler

WEIGHTS = {"shakespeare": 0.5, "c4": 0.3, "alpaca": 0.2}
GLOBAL, MICRO, SEQ = 8, 2, 64


def mixture_overrides(cache: Path, *extra: str) -> list[str]:
    return ["data=mixture_demo", f"data.cache_dir={cache}", f"data.seq_len={SEQ}", *extra]


@pytest.fixture(scope="module")
def mixture(tmp_path_factory):
    """The three demo sources (tinyshakespeare, c4_demo, alpaca's replies) prepared once."""
    cache = tmp_path_factory.mktemp("mixture-cache")
    cfg = load_config(mixture_overrides(cache)).data
    folder = ensure_prepared(cfg)
    _, sources = mixture_train(cfg, folder)
    return cfg, folder, sources


def shares(sampler: GlobalBatchSampler, sources: list[MixtureSource], steps: range) -> np.ndarray:
    """Each source's share of the windows (= tokens: every window is seq_len tokens) over `steps`."""
    bounds = np.cumsum([s.num_windows for s in sources])
    counts = np.zeros(len(sources))
    for step in steps:
        counts += np.bincount(
            np.searchsorted(bounds, sampler.global_batch(step), side="right"), minlength=len(sources)
        )
    return counts / counts.sum()


def test_token_shares_over_first_100_steps_follow_weights_within_1_percent(mixture):
    _, _, sources = mixture
    assert [s.name for s in sources] == list(WEIGHTS)
    sampler = MixtureSampler(sources, GLOBAL, MICRO, 0, 1, seed=0, block_steps=10)
    got = shares(sampler, sources, range(100))
    assert np.abs(got - list(WEIGHTS.values())).max() <= 0.01, got
    # Exactly, per block of 10 steps (80 windows: 40/24/16), not only on average.
    for block in range(10):
        assert np.allclose(shares(sampler, sources, range(10 * block, 10 * block + 10)), [0.5, 0.3, 0.2])
    # Negative control: uniform sampling of the concatenated windows follows the sources' sizes.
    plain = GlobalBatchSampler(sum(s.num_windows for s in sources), GLOBAL, MICRO, 0, 1, seed=0)
    assert np.abs(shares(plain, sources, range(100)) - list(WEIGHTS.values())).max() > 0.02


def test_same_global_batches_after_resume_and_on_another_world_size(mixture):
    _, _, sources = mixture
    full = MixtureSampler(sources, GLOBAL, MICRO, 0, 1, seed=3)
    resumed = MixtureSampler(sources, GLOBAL, MICRO, 0, 1, seed=3, start_step=50)
    ranks = [MixtureSampler(sources, GLOBAL, MICRO, r, 2, seed=3, start_step=50) for r in range(2)]
    batches = iter(resumed)
    rank_iters = [iter(r) for r in ranks]
    for step in range(50, 100):
        expected = full.global_batch(step).tolist()
        mine = [i for _ in range(GLOBAL // MICRO) for i in next(batches)]
        assert mine == expected, step
        split = [i for it in rank_iters for _ in range(GLOBAL // 2 // MICRO) for i in next(it)]
        assert split == expected, step
    assert full.windows_drawn(100) == resumed.windows_drawn(100)
    other_seed = MixtureSampler(sources, GLOBAL, MICRO, 0, 1, seed=4)
    assert other_seed.global_batch(60).tolist() != full.global_batch(60).tolist()


def test_max_epochs_1_on_smallest_source_draws_each_window_once_then_renormalises(mixture, caplog):
    _, _, sources = mixture
    small = min(range(len(sources)), key=lambda i: sources[i].num_windows)
    capped = [
        MixtureSource(s.name, s.weight, s.num_windows, 1 if i == small else None)
        for i, s in enumerate(sources)
    ]
    sampler = MixtureSampler(capped, GLOBAL, MICRO, 0, 1, seed=0)
    lo, hi = sampler.offsets[small], sampler.offsets[small + 1]
    n = capped[small].num_windows
    drawn, last_step = [], None
    steps = int(n / (capped[small].weight * GLOBAL)) + 200  # past the end of its one pass
    with caplog.at_level(logging.INFO, logger="llmtrain"):
        for step in range(steps):
            batch = sampler.global_batch(step)
            mine = batch[(batch >= lo) & (batch < hi)]
            if len(mine):
                last_step = step
            drawn.extend(mine.tolist())
    assert sorted(drawn) == list(range(lo, hi)), "each window of the capped source exactly once"
    assert last_step < steps - 150
    assert sampler.windows_drawn(steps)[capped[small].name] == n
    exhausted = [r for r in caplog.records if "reaches max_epochs" in r.getMessage()]
    assert len(exhausted) == 1 and capped[small].name in exhausted[0].getMessage()
    # After it, the others share the batch 0.5 : 0.3 -> 0.625 / 0.375 (exact per block).
    start = (last_step // 10 + 1) * 10
    after = shares(sampler, capped, range(start, start + 50))
    others = [i for i in range(3) if i != small]
    weights = np.array([capped[i].weight for i in others])
    assert after[small] == 0
    assert np.allclose(after[others], weights / weights.sum(), atol=1e-9)
    # Negative control: without the cap it keeps being drawn in its second epoch.
    uncapped = MixtureSampler(sources, GLOBAL, MICRO, 0, 1, seed=0)
    assert uncapped.windows_drawn(steps)[capped[small].name] > n


def test_all_sources_exhausted_is_an_error_naming_the_step():
    sources = [MixtureSource("a", 1.0, 40, 1), MixtureSource("b", 1.0, 40, 1)]
    sampler = MixtureSampler(sources, 8, 8, 0, 1, seed=0, block_steps=2)
    sampler.global_batch(9)  # 80 windows = 10 steps: all drawn
    with pytest.raises(DataError, match="every source of data.sources reached its max_epochs by step 10"):
        sampler.global_batch(10)


def test_largest_remainder_sums_exactly_and_follows_weights():
    assert largest_remainder(np.array([0.5, 0.3, 0.2]), 80).tolist() == [40, 24, 16]
    assert largest_remainder(np.array([1.0, 1.0, 1.0]), 10).tolist() == [4, 3, 3]
    q = largest_remainder(np.array([0.123, 0.456, 0.421]), 1000)
    assert q.sum() == 1000 and q.tolist() == [123, 456, 421]


def test_training_loader_batches_carry_their_source(mixture):
    cfg, folder, sources = mixture
    loader = build_train_loader(cfg, folder, GLOBAL, MICRO, 0, 1, 0, 0)
    batch = next(iter(loader))
    assert set(batch) >= {"input_ids", "labels", "source_id"} and batch["input_ids"].shape == (MICRO, SEQ)


def _tiny_corpus(tmp: Path, name: str, lines: int) -> Path:
    path = tmp / f"{name}.txt"
    path.write_text("".join(f"{name} line {i} with some words in it\n" for i in range(lines)))
    return path


def _tiny_mixture(tmp: Path, paths: dict[str, Path], *extra: str) -> list[str]:
    """The command-line form of a source list: `data.sources=[{name:a,path:...},...]`."""
    sources = ",".join(f"{{name:{n},path:'{p}',format:text,text_split:line}}" for n, p in paths.items())
    base = [f"data.cache_dir={tmp / 'cache'}", "data.tokenizer=byte", "data.format=auto", "data.seq_len=16"]
    return [*base, f"data.sources=[{sources}]", *extra]


def test_adding_a_source_prepares_only_that_one(tmp_path):
    paths = {"a": _tiny_corpus(tmp_path, "a", 200), "b": _tiny_corpus(tmp_path, "b", 150)}
    cache = tmp_path / "cache"

    def prepared() -> dict[str, int]:
        return {
            p.parent.name: p.stat().st_mtime_ns
            for p in cache.glob("*/manifest.json")
            if "-mix-" not in str(p)
        }

    ensure_prepared(load_config(_tiny_mixture(tmp_path, paths)).data)
    before = prepared()
    assert sorted(name.split("-")[0] for name in before) == ["a", "b"]
    paths["c"] = _tiny_corpus(tmp_path, "c", 100)
    ensure_prepared(load_config(_tiny_mixture(tmp_path, paths)).data)
    after = prepared()
    assert {k: after[k] for k in before} == before, "a and b were not prepared again"
    assert sorted(name.split("-")[0] for name in set(after) - set(before)) == ["c"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (["data.sources.1.weight=-0.5"], r"data.sources\[1\] \(c4\).weight: must be >= 0, got -0.5"),
        (
            ["data.sources.0.weight=0", "data.sources.1.weight=0", "data.sources.2.weight=0"],
            "data.sources: every weight is 0",
        ),
        (["data.sources.2.name=c4"], r"data.sources\[2\] \(c4\).name: 'c4' is given twice"),
        (
            ["+data.sources.1.tokenizer=byte"],
            r"data.sources\[1\] \(c4\).tokenizer: is 'byte' but data.tokenizer is .*llama2",
        ),
        (["data.path=x.txt"], "data.path: is set"),
    ],
)
def test_bad_source_list_is_a_config_error_naming_source_and_key(edit, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        load_config(mixture_overrides(tmp_path, *edit))


def test_missing_path_in_one_source_fails_before_preparing_any(tmp_path):
    cfg = load_config(mixture_overrides(tmp_path / "cache", "data.sources.2.path=/nowhere/alpaca.json")).data
    with pytest.raises(
        DataError, match=r"data.sources\[2\] \(alpaca\).path: .*/nowhere/alpaca.json.* does not exist"
    ):
        ensure_prepared(cfg)
    assert not (tmp_path / "cache").exists(), "nothing prepared for the good sources"
