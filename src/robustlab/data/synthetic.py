"""A small deterministic dataset for tests: one random prototype per class, plus Gaussian noise."""

from __future__ import annotations

import torch

from robustlab.data.base import InMemoryImageDataModule


class SyntheticDataModule(InMemoryImageDataModule):
    def __init__(self, num_train: int = 640, num_test: int = 256, channels: int = 1, image_size: int = 28,
                 num_classes: int = 10, noise: float = 0.15, seed: int = 0, **loader_options) -> None:
        super().__init__(**loader_options)
        self.num_train, self.num_test = num_train, num_test
        self.channels, self.image_size, self.num_classes = channels, image_size, num_classes
        self.noise, self.seed = noise, seed

    def load_split(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed)
        shape = (self.channels, self.image_size, self.image_size)
        prototypes = 0.2 + 0.6 * torch.rand(self.num_classes, *shape, generator=generator)
        generator.manual_seed(self.seed + (1 if train else 2))
        count = self.num_train if train else self.num_test
        labels = torch.randint(self.num_classes, (count,), generator=generator)
        noise = self.noise * torch.randn(count, *shape, generator=generator)
        return (prototypes[labels] + noise).clamp(0.0, 1.0), labels
