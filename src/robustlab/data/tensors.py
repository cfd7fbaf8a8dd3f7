"""A test split handed over as tensors (the Python API: `robustlab.evaluate_model(model, images, labels)`)."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from robustlab.data.base import InMemoryImageDataModule, _as_float_images
from robustlab.errors import ConfigError


class GivenTestSplit(InMemoryImageDataModule):
    """`images` (N, C, H, W) in [0, 1], or uint8 0–255; `labels` (N,) class indices. Only a test split: the
    evaluation's passes, audit and escalation all read it."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, eval_batch_size: int = 1000) -> None:
        super().__init__(eval_batch_size=eval_batch_size)
        images, labels = torch.as_tensor(images).detach().cpu(), torch.as_tensor(labels).detach().cpu()
        if images.dim() != 4 or labels.dim() != 1 or len(images) != len(labels) or len(labels) == 0:
            raise ConfigError(f"images {tuple(images.shape)} and labels {tuple(labels.shape)}: expected images "
                              "(N, C, H, W) and labels (N,), N ≥ 1")
        images, labels = _as_float_images(images, labels)
        if not bool(torch.isfinite(images).all()) or float(images.min()) < 0 or float(images.max()) > 1:
            raise ConfigError("images: expected values in [0, 1] (robustlab's images are never normalized outside "
                              "the model; put the normalization in the model's first layer)")
        self.images = images
        self.test_set = TensorDataset(images, labels)

    def setup(self, stage: str | None = None) -> None:
        """The split is already here."""
