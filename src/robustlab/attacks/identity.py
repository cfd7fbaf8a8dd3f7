"""The empty attack: x itself. With it, clean accuracy is one more column of the matrix."""

from __future__ import annotations

import torch
from torch import nn


class NoAttack:
    """`attack(model, x, y) -> x`; ε is 0 under any norm."""

    eps = 0.0
    norm = "linf"

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x.detach().clone()

    def __repr__(self) -> str:
        return "NoAttack()"
