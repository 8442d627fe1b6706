"""llmtrain.cluster.signals: a signal becomes a stop request, ranks agree on the most demanding one,
and only USR1 is caught during set-up."""

from __future__ import annotations

import os
import signal

import pytest

from llmtrain.cluster.signals import StopRequest


@pytest.fixture
def stop():
    request = StopRequest()
    yield request
    request.uninstall()


def test_usr1_outranks_term_so_a_requeue_request_survives_the_max_over_ranks(stop):
    got_term, got_usr1, got_nothing = StopRequest(), StopRequest(), StopRequest()
    got_term._handle(signal.SIGTERM, None)
    got_usr1._handle(signal.SIGUSR1, None)
    agreed = max(r.code for r in (got_term, got_usr1, got_nothing))
    for rank in (got_term, got_usr1, got_nothing):
        rank.agree(agreed)
        assert rank.signal_name == "SIGUSR1"
    assert StopRequest().code == 0


def test_only_usr1_is_caught_during_set_up(stop):
    """SIGTERM keeps its default until the loop, so a forked data-prep pool's workers still die on
    Pool.terminate() (they inherit the handlers); USR1 is caught so SLURM's warning is not fatal."""
    stop.install((signal.SIGUSR1,))
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    os.kill(os.getpid(), signal.SIGUSR1)
    assert stop.signal_name == "SIGUSR1"
    stop.install()
    assert signal.getsignal(signal.SIGTERM) == stop._handle
