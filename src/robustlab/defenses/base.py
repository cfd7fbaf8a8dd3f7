"""What a defense is: a training loss and a deployment wrapper."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class TrainingLoss(NamedTuple):
    loss: torch.Tensor
    logits: torch.Tensor  # on the inputs the loss was computed on, for train/acc


class Defense(nn.Module):
    """Standard training and the identity deployment; subclasses change one or both.

    A defense is an `nn.Module` so that whatever it deploys (a denoiser, mixture members) is saved with
    the checkpoint. `selection_metric` is the validation metric that picks the best checkpoint.
    """

    def __init__(self, selection_metric: str = "val/acc") -> None:
        super().__init__()
        self.selection_metric = selection_metric

    def training_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> TrainingLoss:
        logits = model(x)
        return TrainingLoss(F.cross_entropy(logits, y), logits)

    def wrap(self, model: nn.Module) -> nn.Module:
        """The deployed predictor: what is evaluated and what every attack sees."""
        return model
