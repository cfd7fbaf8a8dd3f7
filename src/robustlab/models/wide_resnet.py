"""Wide residual networks (Zagoruyko & Komodakis 2016), pre-activation blocks, any input size ≥ 8."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from robustlab.errors import require
from robustlab.models.normalization import Normalize


class PreActBlock(nn.Module):
    """BN → ReLU → conv3×3 → BN → ReLU → (dropout) → conv3×3, plus a 1×1 projection when the shape changes.

    The pre-activation block of He et al. 2016, shared by WRN (with dropout) and PreActResNet-18 (without).
    """

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.relu = nn.ReLU()
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.relu(self.bn1(x))
        residual = x if self.shortcut is None else self.shortcut(activated)
        out = self.conv1(activated)
        out = self.conv2(self.dropout(self.relu(self.bn2(out))))
        return out + residual


class WideResNet(nn.Module):
    """WRN-depth-k: depth = 6n + 4, three stages of n blocks with 16k, 32k, 64k channels."""

    def __init__(self, in_channels: int, num_classes: int, mean: Sequence[float], std: Sequence[float],
                 depth: int = 16, widen_factor: int = 4, dropout: float = 0.0, image_size: int | None = None) -> None:
        super().__init__()
        require(isinstance(depth, int) and depth >= 10 and (depth - 4) % 6 == 0, "depth", depth,
                "6n + 4 for an integer n ≥ 1 (10, 16, 22, 28, ...)")
        require(isinstance(widen_factor, int) and widen_factor >= 1, "widen_factor", widen_factor, "an integer ≥ 1")
        require(image_size is None or image_size >= 8, "image_size", image_size, "an integer ≥ 8")
        blocks_per_stage = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        layers: list[nn.Module] = [Normalize(mean, std), nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)]
        in_planes = widths[0]
        for stage, planes in enumerate(widths[1:]):
            for block in range(blocks_per_stage):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(PreActBlock(in_planes, planes, stride, dropout))
                in_planes = planes
        layers += [nn.BatchNorm2d(in_planes), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                   nn.Linear(in_planes, num_classes)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
