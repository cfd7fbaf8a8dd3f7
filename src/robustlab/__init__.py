"""robustlab: train image classifiers under adversarial defenses, attack them, report every combination.

`robustlab.evaluate_model` and `robustlab.load_predictor` are imported on first use, so that
`from robustlab.attacks import PGD` or the report does not load the training stack (Lightning, Hydra)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from robustlab.api import evaluate_model
    from robustlab.checkpoints import load_predictor

__all__ = ["evaluate_model", "load_predictor"]
__version__ = "0.1.0"
_LAZY = {"evaluate_model": "robustlab.api", "load_predictor": "robustlab.checkpoints"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'robustlab' has no attribute {name!r}")
