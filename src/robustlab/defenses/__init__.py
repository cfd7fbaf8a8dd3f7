"""Defenses: a training loss (`training_loss`) and a deployment wrapper (`wrap`)."""

from robustlab.defenses.adversarial_training import AdversarialTraining
from robustlab.defenses.base import Defense, TrainingLoss

__all__ = ["AdversarialTraining", "Defense", "TrainingLoss"]
