"""The config error type and the two checks every schema section uses."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config value is missing, malformed or inconsistent with another value."""


def require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def one_of(value: str, key: str, choices: tuple[str, ...]) -> None:
    require(value in choices, key, f"got {value!r}, expected one of {', '.join(choices)}")
