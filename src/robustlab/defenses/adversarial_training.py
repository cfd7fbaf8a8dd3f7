"""Adversarial training (Madry et al. 2018): minimise the loss on the defense's own attack's examples."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.defenses.base import Defense, TrainingLoss


class AdversarialTraining(Defense):
    """`attack` is the training threat (default PGD-7 L∞); the model stays in the caller's mode."""

    def __init__(self, attack, selection_metric: str = "val/robust_acc") -> None:
        super().__init__(selection_metric)
        self.attack = attack

    def training_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> TrainingLoss:
        x_adv = self.attack(model, x, y)
        logits = model(x_adv)
        return TrainingLoss(F.cross_entropy(logits, y), logits)

    def extra_repr(self) -> str:
        return f"attack={self.attack!r}"
