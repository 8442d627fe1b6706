"""The one error type of the data package."""

from __future__ import annotations


class DataError(ValueError):
    """Input data or a tokenizer is missing, malformed or inconsistent.

    Messages say what was wrong, where (file:line, config key) and what to do, so the launcher can
    print them as they are instead of a traceback from deep inside a reader.
    """
