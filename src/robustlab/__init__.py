"""robustlab: train image classifiers under adversarial defenses, attack them, report every combination."""

from robustlab.api import evaluate_model
from robustlab.checkpoints import load_predictor

__all__ = ["evaluate_model", "load_predictor"]
__version__ = "0.1.0"
