"""robustlab: train image classifiers under adversarial defenses, attack them, report every combination."""

from robustlab.checkpoints import load_predictor

__all__ = ["load_predictor"]
__version__ = "0.1.0"
