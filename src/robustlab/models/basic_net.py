"""BasicNet: the seed work's small CNN (LeNet-5 shaped), sized from the dataset's channels and image size."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from robustlab.errors import is_integer, require
from robustlab.models.normalization import Normalize


class BasicNet(nn.Module):
    """Normalize → conv5×5(6) → ReLU → maxpool2 → conv5×5(16) → ReLU → maxpool2 → 120 → 84 → classes."""

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        num_classes: int,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        super().__init__()
        require(is_integer(in_channels) and in_channels >= 1, "in_channels", in_channels, "an integer ≥ 1")
        require(is_integer(image_size) and image_size >= 16, "image_size", image_size,
                "an integer ≥ 16 (two 5×5 convs and two 2×2 pools)")
        require(is_integer(num_classes) and num_classes >= 2, "num_classes", num_classes, "an integer ≥ 2")
        side = ((image_size - 4) // 2 - 4) // 2
        self.normalize = Normalize(mean, std)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, kernel_size=5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, kernel_size=5),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * side * side, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.normalize(x)))
