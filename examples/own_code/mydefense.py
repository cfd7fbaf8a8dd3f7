"""A user's own defense: a fixed blur in front of the model, trained through (and attacked through) the blur."""

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.defenses.base import Defense, TrainingLoss
from robustlab.errors import require


class Blur(nn.Module):
    """A k×k box blur per channel: differentiable, so attacks go straight through it."""

    def __init__(self, kernel: int) -> None:
        super().__init__()
        self.kernel = kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, self.kernel, stride=1, padding=self.kernel // 2, count_include_pad=False)


class BlurFront(Defense):
    """Deploys `Blur(kernel)` before the model; trains the model on blurred clean images."""

    def __init__(self, kernel: int = 3) -> None:
        super().__init__()
        # A refused value names its full config key in the error (defense.kernel=4 is not allowed: ...).
        require(isinstance(kernel, int) and kernel >= 1 and kernel % 2 == 1, "kernel", kernel, "an odd integer ≥ 1")
        self.blur = Blur(kernel)

    def wrap(self, model: nn.Module) -> nn.Module:
        return nn.Sequential(self.blur, model)

    def training_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> TrainingLoss:
        logits = self.wrap(model)(x)
        return TrainingLoss(F.cross_entropy(logits, y), logits)
