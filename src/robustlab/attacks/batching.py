"""Cache-sized chunks for attacks on the CPU.

On the CPU, an attack on 1000 Fashion-MNIST images runs faster in chunks of a few hundred than as one
batch: the activations of a chunk stay in cache. Chunking is exact only
when examples are independent, i.e. in eval mode (batch norm in train mode couples a batch), and it only
pays on the CPU; elsewhere the batch is attacked whole.
"""

from __future__ import annotations

import torch
from torch import nn


def chunks(model: nn.Module, x: torch.Tensor, chunk_size: int | None) -> list[slice]:
    """The parts of the batch `x` to attack one after another: chunks of `chunk_size` images for an eval-mode
    model on the CPU, else the whole batch."""
    if chunk_size is None or len(x) <= chunk_size or model.training or x.device.type != "cpu":
        return [slice(0, len(x))]
    return [slice(start, start + chunk_size) for start in range(0, len(x), chunk_size)]
