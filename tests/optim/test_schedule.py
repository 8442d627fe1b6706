import math

import pytest

from llmtrain.config import SchedConfig
from llmtrain.optim.schedule import LRSchedule, lr_lambda

MAX = 100


def curve(name: str, **kw) -> list[float]:
    f = lr_lambda(SchedConfig(name=name, warmup_steps=10, min_lr_ratio=0.1, **kw), MAX)
    return [f(s) for s in range(MAX)]


@pytest.mark.parametrize("name", ["cosine", "linear", "constant", "wsd"])
def test_warmup_rises_linearly_to_the_peak(name):
    lr = curve(name)
    assert lr[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert lr[10] == pytest.approx(1.0)


def test_cosine_and_linear_decay_to_the_floor_at_max_steps():
    f_cos = lr_lambda(SchedConfig(name="cosine", warmup_steps=10, min_lr_ratio=0.1), MAX)
    f_lin = lr_lambda(SchedConfig(name="linear", warmup_steps=10, min_lr_ratio=0.1), MAX)
    assert f_cos(MAX) == pytest.approx(0.1) and f_lin(MAX) == pytest.approx(0.1)
    assert f_cos(55) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f_lin(55) == pytest.approx(0.1 + 0.9 * 0.5)


def test_wsd_holds_the_peak_then_decays_in_the_last_fraction():
    lr = curve("wsd", decay_fraction=0.2)
    decay_start = 10 + int(0.8 * (MAX - 10))  # step 82
    assert all(v == 1.0 for v in lr[10:decay_start])
    assert lr[decay_start + 1] < 1.0 and lr[-1] > 0.1
    assert all(a >= b for a, b in zip(lr[decay_start:], lr[decay_start + 1 :]))


def test_constant_stays_at_the_peak():
    assert curve("constant")[10:] == [1.0] * (MAX - 10)


def test_warmup_longer_than_the_run_is_clamped():
    f = lr_lambda(SchedConfig(name="cosine", warmup_steps=50), 5)
    assert [f(s) for s in range(5)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])


@pytest.mark.parametrize("name", ["cosine", "linear", "wsd"])
def test_extending_a_run_re_plans_the_decay_from_the_resume_step_without_re_entering_warmup(name):
    """A run planned for 10 steps with a 20-step warmup (clamped to 10) is extended to 20 at step 10.
    Before: the whole schedule was recomputed over 20 steps, so step 15 went back into warmup
    (lr 0.8 × peak after 1.0). Now the multiplier is continuous at the resume step, never rises
    above what the run had reached unless that was the peak, and ends at the floor."""
    cfg = SchedConfig(name=name, warmup_steps=20, min_lr_ratio=0.1)
    original = LRSchedule(cfg, 10)
    at_resume = original(10)
    extended = LRSchedule(cfg, 20)
    extended.resume(original.to_dict(), step=10, max_steps=20)
    lrs = [extended(s) for s in range(10, 21)]
    assert lrs[0] == pytest.approx(at_resume)
    assert all(b <= a + 1e-12 for a, b in zip(lrs, lrs[1:])), lrs  # no warmup again
    assert lrs[-1] == pytest.approx(0.1)


def test_a_wsd_run_extended_from_its_stable_phase_keeps_the_peak_and_decays_at_the_new_end():
    cfg = SchedConfig(name="wsd", warmup_steps=10, min_lr_ratio=0.1, decay_fraction=0.2)
    schedule = LRSchedule(cfg, 100)
    schedule.resume(schedule.to_dict(), step=50, max_steps=200)
    assert schedule(150) == pytest.approx(1.0)  # the old plan would be at its floor by now
    assert schedule(200) == pytest.approx(0.1)
    assert schedule(40) == pytest.approx(1.0)  # steps before the resume keep the old plan


def test_the_plan_survives_two_extensions_and_an_unchanged_resume():
    cfg = SchedConfig(name="cosine", warmup_steps=5, min_lr_ratio=0.0)
    first = LRSchedule(cfg, 20)
    second = LRSchedule(cfg, 40)
    second.resume(first.to_dict(), step=10, max_steps=40)
    third = LRSchedule(cfg, 40)
    third.resume(second.to_dict(), step=30, max_steps=40)  # same horizon: nothing re-planned
    assert [third(s) for s in range(10, 41)] == pytest.approx([second(s) for s in range(10, 41)])
    fourth = LRSchedule(cfg, 60)
    fourth.resume(third.to_dict(), step=30, max_steps=60)
    assert fourth(30) == pytest.approx(second(30)) and fourth(60) == pytest.approx(0.0)
