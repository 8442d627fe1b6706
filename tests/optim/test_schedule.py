import math

import pytest

from llmtrain.config import SchedConfig
from llmtrain.optim.schedule import lr_lambda

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
