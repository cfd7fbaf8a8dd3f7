"""Defenses: a training loss (`training_loss`), a deployment wrapper (`wrap`), and their stages."""

from robustlab.defenses.adversarial_training import AdversarialTraining
from robustlab.defenses.base import Defense, Stage, TrainingLoss
from robustlab.defenses.denoiser import DenoiserDefense
from robustlab.defenses.mixed_adversarial_training import MixedAdversarialTraining
from robustlab.defenses.random_mixture import MixturePredictor, RandomMixture
from robustlab.defenses.trades import TRADES

__all__ = ["AdversarialTraining", "Defense", "DenoiserDefense", "MixedAdversarialTraining", "MixturePredictor",
           "RandomMixture", "Stage",
           "TRADES", "TrainingLoss"]
