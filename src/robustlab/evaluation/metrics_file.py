"""metrics.json: one run's results, the only input the matrix report needs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from robustlab.files import write_text_atomically


def _finite(value: Any, key: str) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"metrics.json: {key} is {value}; a non-finite number is never written")
    if isinstance(value, dict):
        return {k: _finite(v, f"{key}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v, f"{key}[{i}]") for i, v in enumerate(value)]
    return value


def write_metrics(directory: str | Path, record: dict) -> Path:
    """Write `record` as `<directory>/metrics.json` atomically (a killed run leaves no half file)."""
    return write_text_atomically(Path(directory) / "metrics.json",
                                 json.dumps(_finite(record, "metrics"), indent=2, sort_keys=False) + "\n")


def read_metrics(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())
