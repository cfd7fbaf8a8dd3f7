"""A linear classifier (multinomial logistic regression on pixels): the smallest model, for baselines and for
measuring what the framework itself costs per step."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from robustlab.errors import is_integer, require
from robustlab.models.normalization import Normalize


class LinearClassifier(nn.Module):
    """Normalize → flatten → one linear layer to the classes."""

    def __init__(self, in_channels: int, image_size: int, num_classes: int, mean: Sequence[float],
                 std: Sequence[float]) -> None:
        super().__init__()
        require(is_integer(in_channels) and in_channels >= 1, "in_channels", in_channels, "an integer ≥ 1")
        require(is_integer(image_size) and image_size >= 1, "image_size", image_size, "an integer ≥ 1")
        require(is_integer(num_classes) and num_classes >= 2, "num_classes", num_classes, "an integer ≥ 2")
        self.normalize = Normalize(mean, std)
        self.linear = nn.Linear(in_channels * image_size * image_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.normalize(x).flatten(1))
