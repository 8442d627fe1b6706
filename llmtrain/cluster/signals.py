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


class StopRequest:
    def __init__(self) -> None:
        self.signal_name: str | None = None

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def install(self) -> StopRequest:
        if threading.current_thread() is not threading.main_thread():
            return self  # signal handlers can only be set from the main thread (e.g. in some test runners)
        for sig in STOP_SIGNALS:
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
