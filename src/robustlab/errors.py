"""Errors a user can act on: each names what was wrong and what would be right."""

from __future__ import annotations

import math
import sys
from contextlib import contextmanager
from typing import Any


class RobustlabError(Exception):
    """An error the user can act on; the command-line shims print it alone and exit with status 2."""


class ConfigError(RobustlabError, ValueError):
    """A configuration value that robustlab refuses, raised before any training starts."""


class TrainingDiverged(RobustlabError):
    """The training loss became NaN or infinite; the run stops before anything is evaluated or written."""


class InvalidValue(ConfigError):
    """Raised by a constructor for one bad argument; `robustlab.configuration.instantiate` adds the full key."""

    def __init__(self, field: str, value: Any, allowed: str, key_prefix: str = "") -> None:
        self.field = field
        self.value = value
        self.allowed = allowed
        self.key = f"{key_prefix}.{field}" if key_prefix else field
        super().__init__(f"{self.key}={value!r} is not allowed: expected {allowed}")

    def under(self, key_prefix: str) -> InvalidValue:
        """The same error, its key prefixed with where the object sits in the config."""
        return InvalidValue(self.field, self.value, self.allowed, key_prefix)


class DataError(RobustlabError):
    """A dataset file that is there but unusable (truncated, corrupt); the message says how to recover."""


class CheckpointError(ConfigError):
    """A checkpoint that is missing, unreadable, or not one robustlab wrote."""


def is_integer(value: Any) -> bool:
    """An int, and not a bool (a config's `steps=true` is a mistake, not one step)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite int or float, and not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def require(condition: bool, field: str, value: Any, allowed: str) -> None:
    """Raise `InvalidValue` unless `condition` holds."""
    if not condition:
        raise InvalidValue(field, value, allowed)


@contextmanager
def exit_on_user_error():
    """For the command-line shims: a `RobustlabError` becomes one clear message and exit status 2."""
    try:
        yield
    except ConfigError as error:
        print(f"robustlab: invalid configuration: {error}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    except RobustlabError as error:
        print(f"robustlab: {error}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
