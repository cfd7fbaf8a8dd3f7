"""Gradients of a classification loss with respect to the input only."""

from __future__ import annotations

import torch
from torch import nn

from robustlab.attacks.expectation import expected_correct, per_example_loss
from robustlab.attacks.losses import cross_entropy


def loss_and_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int = 1, loss=cross_entropy
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example (expected, see `expectation`) loss and its ∇ₓ; parameters' `.grad` are untouched."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        values = per_example_loss(model, x, y, draws, loss)
        (grad,) = torch.autograd.grad(values.sum(), x)
    return values.detach(), grad


def input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int = 1) -> torch.Tensor:
    """∇ₓ of the summed (expected) cross-entropy."""
    return loss_and_gradient(model, x, y, draws)[1]


@torch.no_grad()
def loss_and_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int = 1
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example (expected) cross-entropy, and whether the prediction is right (in expectation > 1/2)."""
    return per_example_loss(model, x, y, draws), expected_correct(model, x, y, draws) > 0.5
