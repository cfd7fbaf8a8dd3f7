"""Cache-sized chunks for attacks on the CPU.

On the CPU, an attack on 1000 Fashion-MNIST images runs faster in chunks of a few hundred than as one
batch: the activations of a chunk stay in cache. Chunking is exact only
when examples are independent, i.e. in eval mode (batch norm in train mode couples a batch), and it only
pays on the CPU; elsewhere the batch is attacked whole.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

Attack = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def in_chunks(attack: Attack, model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk_size: int | None) -> torch.Tensor:
    if chunk_size is None or len(x) <= chunk_size or model.training or x.device.type != "cpu":
        return attack(model, x, y)
    return torch.cat([attack(model, x_part, y_part) for x_part, y_part in zip(x.split(chunk_size), y.split(chunk_size))])
