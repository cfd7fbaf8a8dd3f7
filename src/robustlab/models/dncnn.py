"""DnCNN (Zhang et al. 2017): a denoiser that predicts the perturbation and subtracts it (residual learning)."""

from __future__ import annotations

import torch
from torch import nn

from robustlab.errors import is_integer, require


class DnCNN(nn.Module):
    """conv3×3+ReLU, then (depth − 2) × conv3×3+BN+ReLU, then conv3×3 to the image's channels.

    The output is `x − net(x)`: an image in the input's pixel units (not clamped, so gradients pass through
    everywhere). Zhang et al. use depth 17 and 64 features.
    """

    def __init__(self, channels: int, depth: int = 17, features: int = 64) -> None:
        super().__init__()
        require(is_integer(channels) and channels >= 1, "channels", channels, "an integer ≥ 1")
        require(is_integer(depth) and depth >= 3, "depth", depth, "an integer ≥ 3")
        require(is_integer(features) and features >= 1, "features", features, "an integer ≥ 1")
        layers: list[nn.Module] = [nn.Conv2d(channels, features, 3, padding=1), nn.ReLU()]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(features, features, 3, padding=1, bias=False), nn.BatchNorm2d(features), nn.ReLU()]
        layers.append(nn.Conv2d(features, channels, 3, padding=1))
        self.residual = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.residual(x)
