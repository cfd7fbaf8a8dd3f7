"""Files that several processes share: exclusive locks, and writes that a killed process never leaves half done."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def locked(directory: str | Path):
    """An exclusive lock on `directory` (its `.lock` file), released when the block ends or the process dies.

    Held by DDP process 0 alone: the other processes of a job run inside process 0's lock.
    """
    from pytorch_lightning.utilities import rank_zero_only  # here: reading a record needs no Lightning

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if getattr(rank_zero_only, "rank", 0) != 0:  # Lightning sets the process's rank on the function
        yield
        return
    with open(directory / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_atomically(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call `write(partial_path)` to write the file beside `path`, then rename it onto `path`.

    A rename within one directory is atomic, so readers see the old file or the whole new one, never a torn
    one. The partial name keeps the suffix, so writers that choose a format by suffix (matplotlib) still can.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")
    try:
        write(partial)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def write_text_atomically(path: str | Path, text: str) -> Path:
    return write_atomically(path, lambda partial: partial.write_text(text))
