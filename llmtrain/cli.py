"""How the entry points in `launch/` report a failure: one clear line, once per job.

Errors that say what the user got wrong (a config key, a data file, a checkpoint, a run directory
in use) exit with status 2 and the message alone, printed by rank 0 only; the other ranks exit
quietly with the same status. `LLMTRAIN_DEBUG=1` re-raises them with the full traceback. Anything
else is a bug (or an environment failure) and keeps its traceback.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable
from typing import TypeVar

from llmtrain.checkpoint.errors import CheckpointError
from llmtrain.config import ConfigError
from llmtrain.data.errors import DataError
from llmtrain.dist import env_ranks
from llmtrain.strategy.dcp_reader import UnsafeCheckpointError
from llmtrain.strategy.state_file import StateFileError
from llmtrain.train.rundir_lock import RunDirInUse

T = TypeVar("T")
USAGE_ERROR = 2
USER_ERRORS = (ConfigError, DataError, CheckpointError, StateFileError, UnsafeCheckpointError, RunDirInUse)


def _label(exc: BaseException) -> str:
    return "config error" if isinstance(exc, ConfigError) else "error"


def run(main: Callable[[], T]) -> T:
    """`main()`, with user errors turned into one line and exit status 2."""
    try:
        return main()
    except USER_ERRORS as exc:
        _exit(f"{_label(exc)}: {exc}", exc)
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        where = f" writing {exc.filename}" if isinstance(exc, OSError) and exc.filename else ""
        _exit(
            f"error: no space left on the device{where} ({str(exc).splitlines()[0][:200]}); free space, "
            "or point run.dir / data.cache_dir at a filesystem with room",
            exc,
        )


# How a full disk surfaces from the writers we use: OSError (ENOSPC), safetensors ("No space left
# on device (os error 28)"), torch.save ("PytorchStreamWriter failed writing file ... unexpected pos").
_DISK_FULL_TEXT = ("No space left on device", "os error 28", "unexpected pos", "file write failed")


def is_disk_full(exc: BaseException | None) -> bool:
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return True
        if any(text in str(exc) for text in _DISK_FULL_TEXT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _exit(message: str, exc: BaseException) -> None:
    if os.environ.get("LLMTRAIN_DEBUG") == "1":
        raise exc
    if env_ranks()[0] == 0:
        print(message, file=sys.stderr)
    sys.exit(USAGE_ERROR)
