"""Errors a user can act on: each names what was wrong and what would be right."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Any


class ConfigError(ValueError):
    """A configuration value that robustlab refuses, raised before any training starts."""


class InvalidValue(ConfigError):
    """Raised by a constructor for one bad argument; `robustlab.configuration.instantiate` adds the full key."""

    def __init__(self, field: str, value: Any, allowed: str, key_prefix: str = "") -> None:
        self.field = field
        self.value = value
        self.allowed = allowed
        self.key = f"{key_prefix}.{field}" if key_prefix else field
        super().__init__(f"{self.key}={value!r} is not allowed: expected {allowed}")

    def under(self, key_prefix: str) -> "InvalidValue":
        """The same error, its key prefixed with where the object sits in the config."""
        return InvalidValue(self.field, self.value, self.allowed, key_prefix)


class DatasetNotFoundError(ConfigError):
    """No usable copy of a dataset in any of the places robustlab looks."""


class CheckpointError(ConfigError):
    """A checkpoint that is missing, unreadable, or not one robustlab wrote."""


def require(condition: bool, field: str, value: Any, allowed: str) -> None:
    """Raise `InvalidValue` unless `condition` holds."""
    if not condition:
        raise InvalidValue(field, value, allowed)


@contextmanager
def exit_on_config_error():
    """For the command-line shims: a `ConfigError` becomes one clear message and exit status 2."""
    try:
        yield
    except ConfigError as error:
        print(f"robustlab: invalid configuration: {error}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
