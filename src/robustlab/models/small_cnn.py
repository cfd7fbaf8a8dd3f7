"""SmallCNN: the 4-conv network of TRADES' MNIST experiments (Zhang et al. 2019), sized from the dataset."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from robustlab.errors import require
from robustlab.models.normalization import Normalize


class SmallCNN(nn.Module):
    """conv3×3(32) → conv3×3(32) → pool → conv3×3(64) → conv3×3(64) → pool → 200 → 200 → classes (ReLUs)."""

    def __init__(self, in_channels: int, image_size: int, num_classes: int, mean: Sequence[float],
                 std: Sequence[float], dropout: float = 0.5) -> None:
        super().__init__()
        require(isinstance(image_size, int) and image_size >= 12, "image_size", image_size,
                "an integer ≥ 12 (four unpadded 3×3 convs and two 2×2 pools)")
        require(0 <= dropout < 1, "dropout", dropout, "a number in [0, 1)")
        side = ((image_size - 4) // 2 - 4) // 2
        self.normalize = Normalize(mean, std)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3), nn.ReLU(),
            nn.Conv2d(32, 32, 3), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3), nn.ReLU(),
            nn.Conv2d(64, 64, 3), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * side * side, 200), nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(200, 200), nn.ReLU(),
            nn.Linear(200, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.normalize(x)))
