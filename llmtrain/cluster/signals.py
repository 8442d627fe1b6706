"""Turn SIGTERM / SIGUSR1 / SIGINT into a request to stop cleanly after the current step.

The handler only sets a flag; the loop checks it between steps, all ranks agree (a max over
ranks, since the signal may reach only some of them), a checkpoint is written, and the run exits.
A second SIGINT falls through to Python's default (KeyboardInterrupt) for an impatient user.
"""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
# Ranks agree with a max over these codes, so when ranks saw different signals the one that asks
# for more wins: SIGUSR1 (SLURM's warning before the time limit) also asks for a requeue.
STOP_CODES = {"SIGINT": 1, "SIGTERM": 2, "SIGUSR1": 3}


class StopRequest:
    def __init__(self) -> None:
        self.signal_name: str | None = None

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    @property
    def code(self) -> int:
        """0 for no request, else the signal's STOP_CODES entry (all-reduced with max by the loop)."""
        return STOP_CODES.get(self.signal_name, 0) if self.signal_name else 0

    def agree(self, code: int) -> None:
        """Adopt the signal the ranks agreed on, also on a rank that did not receive one itself."""
        self.signal_name = next(name for name, c in STOP_CODES.items() if c == code)

    def install(self, signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> StopRequest:
        if threading.current_thread() is not threading.main_thread():
            return self  # signal handlers can only be set from the main thread (e.g. in some test runners)
        for sig in signals:
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_name = name
        log.warning("received %s: finishing the current step, then saving a checkpoint and stopping", name)

    def uninstall(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                signal.signal(sig, signal.SIG_DFL if sig != signal.SIGINT else signal.default_int_handler)
