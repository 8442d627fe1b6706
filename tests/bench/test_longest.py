"""The longest-sequence search finds the last length under the cap on the lengths the mesh allows,
and one real probe job (2 ranks, sequence parallel) reports per-rank memory that grows with length."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmtrain.bench.longest import Variant, _granule, parse_variant, run_longest, search_longest
from llmtrain.bench.memory_probe import MemoryProbe
from llmtrain.config import ConfigError

BENCH = Path(__file__).resolve().parents[2] / "launch" / "bench.py"


def _linear(resting: int, per_token: int):
    """A probe whose memory grows by `per_token` bytes a token (activations) over `resting` bytes."""
    seen: list[int] = []

    def probe(length: int) -> MemoryProbe:
        seen.append(length)
        step = per_token * length
        return MemoryProbe(length, 1, resting, step, resting + step, 0.0)

    probe.seen = seen
    return probe


@pytest.mark.parametrize(
    ("cap", "start", "granule", "limit", "longest"),
    [
        (1_000 + 10 * 5_000, 512, 128, 1 << 20, 4_992),  # doubling 512..8192, then bisection to 4,992
        (1_000 + 10 * 5_000, 8_192, 128, 1 << 20, 4_992),  # the start is already over: bisect below it
        (1_000 + 10 * 300, 512, 128, 1 << 20, 256),
        (1_000 + 10 * 100, 512, 128, 1 << 20, 0),  # not even one granule fits
        (1 << 40, 512, 128, 3_000, 2_944),  # the limit (rounded to the granule) fits: stop there
        (1_000 + 10 * 2_000, 300, 6, 1 << 20, 1_998),  # start rounded up to the granule (sp=6, say)
    ],
)
def test_search_finds_the_longest_multiple_of_the_granule_within_the_cap(cap, start, granule, limit, longest):
    probe = _linear(1_000, 10)
    result = search_longest(probe, cap, start, granule, limit)
    assert result.longest == longest
    assert all(n % granule == 0 and 0 < n <= limit for n in probe.seen)
    # Everything at or below the answer fits, one granule more does not (unless at the limit).
    assert 1_000 + 10 * longest <= cap
    if longest + granule <= limit:
        assert 1_000 + 10 * (longest + granule) > cap
    # Doubling then bisection: logarithmic in the range, not a scan over every length.
    assert len(probe.seen) <= 2 * (limit // granule).bit_length() + 2
    if longest:
        assert result.longest_probe.seq_len == longest


def test_a_variant_is_name_ranks_and_overrides_and_a_bad_one_says_what_is_expected():
    assert parse_variant("sp2:4=strategy=fsdp parallel.sp=2", 2) == Variant(
        "sp2", 4, ("strategy=fsdp", "parallel.sp=2")
    )
    assert parse_variant("dp=strategy=fsdp", 2).ranks == 2
    for bad in ("sp2", "sp2:x=strategy=fsdp", ":2=strategy=fsdp", "sp2:0=strategy=fsdp"):
        with pytest.raises(ConfigError, match="expected NAME\\[:RANKS\\]=OVERRIDES"):
            parse_variant(bad, 2)


def test_searched_lengths_are_multiples_of_what_sequence_parallel_needs():
    variant = parse_variant("sp4:4=strategy=fsdp parallel.sp=4 model.num_kv_heads=4", 2)
    assert _granule(variant, [], 6) == 12
    assert _granule(parse_variant("dp=strategy=fsdp", 2), [], 6) == 6


@pytest.mark.slow
def test_a_real_two_rank_search_reports_per_rank_memory_growing_with_length(tmp_path, capsys):
    """Two probe jobs under torchrun (sp=2 on 2 ranks): 256 then 512 tokens, both under 1 GiB."""
    out = tmp_path / "longest.json"
    results = run_longest(
        BENCH,
        ["trainer.device=cpu", "model.gradient_checkpointing=false", f"data.cache_dir={tmp_path}/cache"],
        ["sp2:2=strategy=fsdp parallel.sp=2"],
        cap_gib=1.0,
        vs_hf=False,
        start=256,
        granule=128,
        limit=512,
        json_path=out,
    )
    (short, long_), sp2 = results["sp2"].probes, results["sp2"]
    assert sp2.longest == 512 and [short.seq_len, long_.seq_len] == [256, 512]
    assert short.world_size == long_.world_size == 2
    # The resting state (sharded weights and states) does not depend on the length; the step does.
    assert short.resting_bytes == long_.resting_bytes > 0
    assert long_.step_peak_bytes > 1.5 * short.step_peak_bytes
    assert "sp2" in capsys.readouterr().out
    assert json.loads(out.read_text())["variants"]["sp2"]["longest"] == 512
