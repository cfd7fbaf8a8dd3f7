"""PreActResNet-18 (He et al. 2016, identity mappings), the usual adversarial-training ResNet, any input ≥ 8 px."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from robustlab.errors import require
from robustlab.models.normalization import Normalize
from robustlab.models.wide_resnet import PreActBlock


class PreActResNet18(nn.Module):
    """Four stages of two blocks with width, 2·width, 4·width, 8·width channels (width 64 is the paper's).

    The stages are the named children `layer1` … `layer4`, so noise can be injected after any of them.
    """

    def __init__(self, in_channels: int, num_classes: int, mean: Sequence[float], std: Sequence[float],
                 width: int = 64, image_size: int | None = None) -> None:
        super().__init__()
        require(isinstance(width, int) and width >= 1, "width", width, "an integer ≥ 1")
        require(image_size is None or image_size >= 8, "image_size", image_size, "an integer ≥ 8")
        self.normalize = Normalize(mean, std)
        self.stem = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        in_planes = width
        for stage in range(4):
            planes = width * 2 ** stage
            stride = 1 if stage == 0 else 2
            self.add_module(f"layer{stage + 1}", nn.Sequential(PreActBlock(in_planes, planes, stride),
                                                               PreActBlock(planes, planes, 1)))
            in_planes = planes
        self.head = nn.Sequential(nn.BatchNorm2d(in_planes), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(in_planes, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stem(self.normalize(x))
        for stage in range(4):
            out = self.get_submodule(f"layer{stage + 1}")(out)
        return self.head(out)
