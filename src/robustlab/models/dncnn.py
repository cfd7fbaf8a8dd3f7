"""DnCNN (Zhang et al. 2017): a denoiser that predicts the perturbation and subtracts it (residual learning)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.errors import is_integer, require


class DnCNN(nn.Module):
    """conv3×3+ReLU, then (depth − 2) × conv3×3+BN+ReLU, then conv3×3 to the image's channels.

    The output is `x − net(x)`: an image in the input's pixel units (not clamped, so gradients pass through
    everywhere). Zhang et al. use depth 17 and 64 features.

    In eval mode each BatchNorm is an affine map of its running statistics, folded into the convolution before
    it on every call (`_folded`): the same function, its gradients to the input and to every parameter included,
    without the BatchNorm's passes over the feature maps (the deployed denoiser, attacked by every attack).
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
        return x - (self.residual(x) if self.training else self._folded(x))

    def _folded(self, x: torch.Tensor) -> torch.Tensor:
        """`residual(x)` in eval mode, each conv + BatchNorm as one convolution (weights scaled by γ/√(σ² + ε),
        bias β − μ·γ/√(σ² + ε); computed with autograd, so parameter gradients flow as through the two layers)."""
        layers, index = list(self.residual), 0
        while index < len(layers):
            layer = layers[index]
            following = layers[index + 1] if index + 1 < len(layers) else None
            if isinstance(layer, nn.Conv2d) and isinstance(following, nn.BatchNorm2d) \
                    and following.running_var is not None and following.running_mean is not None:
                scale = torch.rsqrt(following.running_var + following.eps)
                if following.weight is not None:
                    scale = scale * following.weight
                bias = -following.running_mean * scale
                if following.bias is not None:
                    bias = bias + following.bias
                if layer.bias is not None:
                    bias = bias + layer.bias * scale
                x = F.conv2d(x, layer.weight * scale.view(-1, 1, 1, 1), bias, layer.stride, layer.padding,
                             layer.dilation, layer.groups)
                index += 2
            else:
                x = layer(x)
                index += 1
        return x
