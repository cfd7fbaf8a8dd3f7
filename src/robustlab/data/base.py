"""Datasets held in memory as tensors: [0, 1] float images (N, C, H, W) and int64 labels.

Small image datasets fit in memory; slicing tensors per batch avoids per-sample PIL and collate work on
the hot path. The validation split is carved from the training set with a fixed seed; the test split is
only used for the final evaluation.
"""

from __future__ import annotations

import torch
from pytorch_lightning import LightningDataModule
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, TensorDataset

from robustlab.errors import require


class InMemoryImageDataModule(LightningDataModule):
    """Subclasses implement `load_split(train) -> (images, labels)`; everything else is shared."""

    def __init__(self, batch_size: int = 128, eval_batch_size: int = 1000, val_size: int = 5000,
                 split_seed: int = 0, resident_on_device: bool = True) -> None:
        super().__init__()
        require(isinstance(batch_size, int) and batch_size >= 1, "batch_size", batch_size, "an integer ≥ 1")
        require(isinstance(eval_batch_size, int) and eval_batch_size >= 1, "eval_batch_size", eval_batch_size,
                "an integer ≥ 1")
        require(isinstance(val_size, int) and val_size >= 1, "val_size", val_size, "an integer ≥ 1")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.val_size = val_size
        self.split_seed = split_seed
        self.resident_on_device = resident_on_device
        self.train_set: TensorDataset | None = None
        self.val_set: TensorDataset | None = None
        self.test_set: TensorDataset | None = None

    def load_split(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            images, labels = _as_float_images(*self.load_split(train=True))
            require(self.val_size < len(labels), "val_size", self.val_size,
                    f"fewer than the {len(labels)} training images")
            order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.split_seed))
            val_index, train_index = order[: self.val_size], order[self.val_size:]
            self.train_set = TensorDataset(images[train_index], labels[train_index])
            self.val_set = TensorDataset(images[val_index], labels[val_index])
        if self.test_set is None:
            self.test_set = TensorDataset(*_as_float_images(*self.load_split(train=False)))

    def train_dataloader(self) -> DataLoader:
        return _batches(self._on_device(self.train_set), self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return _batches(self._on_device(self.val_set), self.eval_batch_size, shuffle=False)

    def test_dataloader(self, limit: int | None = None) -> DataLoader:
        """The test split in order; with `limit`, only its first `limit` images."""
        dataset = self._on_device(self.test_set)
        if limit is not None and 0 <= limit < len(dataset):
            dataset = TensorDataset(*(tensor[:limit] for tensor in dataset.tensors))
        return _batches(dataset, self.eval_batch_size, shuffle=False)


    def _on_device(self, dataset: TensorDataset) -> TensorDataset:
        """With `resident_on_device`, move a split once to the accelerator the Trainer runs on.

        Batches are then slices of device memory: no host-to-device copy per step. On the CPU, a no-op.
        """
        device = self.trainer.strategy.root_device if self.trainer is not None else None
        if self.resident_on_device and device is not None and dataset.tensors[0].device != device:
            dataset.tensors = tuple(tensor.to(device) for tensor in dataset.tensors)
        return dataset


def _as_float_images(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, H, W) / (N, H, W, C) / (N, C, H, W) or float images → float32 (N, C, H, W) in [0, 1]."""
    images = torch.as_tensor(images)
    if images.dim() == 3:
        images = images.unsqueeze(1)
    if images.dtype == torch.uint8:
        images = images.float().div_(255.0)
    return images.float().contiguous(), torch.as_tensor(labels, dtype=torch.long)


def _batches(dataset: TensorDataset, batch_size: int, shuffle: bool) -> DataLoader:
    # A sampler of index batches + batch_size=None: one tensor slice per batch, no per-sample collate.
    order = RandomSampler(dataset) if shuffle else SequentialSampler(dataset)
    return DataLoader(dataset, sampler=BatchSampler(order, batch_size, drop_last=False), batch_size=None)
