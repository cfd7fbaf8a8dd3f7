"""Image grids for TensorBoard: clean, adversarial, and the perturbation made visible."""

from __future__ import annotations

import torch
from torchvision.utils import make_grid


def adversarial_grid(x: torch.Tensor, x_adv: torch.Tensor, count: int = 8) -> torch.Tensor:
    """Three rows of `count` images: clean, adversarial, perturbation scaled to fill [0, 1] (grey = 0)."""
    x, x_adv = x[:count].detach().float().cpu(), x_adv[:count].detach().float().cpu()
    delta = x_adv - x
    scale = delta.flatten(1).abs().amax(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
    amplified = 0.5 + delta / (2 * scale)
    return make_grid(torch.cat([x, x_adv, amplified]), nrow=len(x), padding=2, pad_value=1.0)
