"""Gradients of a classification loss with respect to the input only."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """∇ₓ of the summed cross-entropy; parameters' `.grad` are neither computed nor touched."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(x), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    return grad


@torch.no_grad()
def loss_and_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example cross-entropy and whether the prediction is right."""
    logits = model(x)
    return F.cross_entropy(logits, y, reduction="none"), logits.argmax(dim=1) == y
