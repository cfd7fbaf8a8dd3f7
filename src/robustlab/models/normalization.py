"""Per-channel standardisation as a model's first layer, so everything outside sees [0, 1] images."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from robustlab.errors import is_number, require


class Normalize(nn.Module):
    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        for field, values, low in (("mean", mean, -math.inf), ("std", std, 0.0)):
            require(isinstance(values, Sequence) and not isinstance(values, str) and len(values) >= 1
                    and all(is_number(value) and value > low for value in values), field, values,
                    f"a list of per-channel numbers{' > 0' if low == 0 else ''}")
        require(len(mean) == len(std), "std", std, f"as many values as mean ({len(mean)})")
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"
