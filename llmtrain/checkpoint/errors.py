"""The error type of the checkpoint package."""

from __future__ import annotations


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or was written by a run this one cannot continue.

    Messages name the folder or file and say what to do (resume elsewhere, export and restart).
    """


class CheckpointNotFound(CheckpointError, FileNotFoundError):
    """No complete checkpoint where one was asked for."""
