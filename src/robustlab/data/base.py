"""Datasets held in memory as tensors: [0, 1] float images (N, C, H, W) and int64 labels.

Small image datasets fit in memory; slicing tensors per batch avoids per-sample PIL and collate work on
the hot path. The validation split is carved from the training set with a fixed seed; the test split is
only used for the final evaluation.

Under DDP (several processes) the datamodule shards the splits itself (the Trainer's
`use_distributed_sampler` is off): training batches come from one permutation per epoch shared by every
process, each process taking every W-th batch; the test split is dealt out the same way without padding,
so every test image is evaluated exactly once, and its batches carry the images' indices so the
per-image results can be put back in order; validation runs whole on every process, so checkpoint
selection sees the same numbers everywhere and needs no reduction.
"""

from __future__ import annotations

import math
import os

import torch
from pytorch_lightning import LightningDataModule
from torch.utils.data import DataLoader, Sampler, TensorDataset

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

    def split(self, name: str) -> TensorDataset:
        """The `train`, `val` or `test` split, once `setup` has loaded it."""
        dataset = {"train": self.train_set, "val": self.val_set, "test": self.test_set}[name]
        if dataset is None:
            raise RuntimeError(f"the {name} split is not loaded: call setup() first")
        return dataset

    def train_dataloader(self) -> DataLoader:
        return _batches(self._on_device(self.split("train")), self.batch_size, shuffle=True, shard=self._shard())

    def val_dataloader(self) -> DataLoader:
        return _batches(self._on_device(self.split("val")), self.eval_batch_size, shuffle=False)

    def test_dataloader(self, limit: int | None = None, indexed: bool = False, shard: tuple[int, int] | None = None,
                        device: torch.device | None = None) -> DataLoader:
        """The test split in order; with `limit`, only its first `limit` images.

        `indexed=True` (the evaluation passes): batches are `(images, labels, indices)`, the indices on the
        CPU, and each process gets its `shard` (its rank, the number of processes; by default the Trainer's)
        of the batches, none twice. `device`: where a resident split lives (by default the Trainer's).
        """
        dataset = self._on_device(self.split("test"), device)
        tensors = dataset.tensors
        if limit is not None and 0 <= limit < len(dataset):
            tensors = tuple(tensor[:limit] for tensor in tensors)
        if indexed:
            return _batches(TensorDataset(*tensors, torch.arange(len(tensors[0]))), self.eval_batch_size,
                            shuffle=False, shard=shard or self._shard())
        return _batches(TensorDataset(*tensors), self.eval_batch_size, shuffle=False)

    def _shard(self) -> tuple[int, int]:
        """(this process's rank, number of processes) of the Trainer's run; (0, 1) outside one."""
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def _on_device(self, dataset: TensorDataset, device: torch.device | None = None) -> TensorDataset:
        """With `resident_on_device`, move a split once to the accelerator the run uses (`device`, or the
        Trainer's).

        Batches are then slices of device memory: no host-to-device copy per step. On the CPU, a no-op.
        """
        if device is None and self.trainer is not None:
            device = self.trainer.strategy.root_device
        if self.resident_on_device and device is not None and dataset.tensors[0].device != device:
            dataset.tensors = tuple(tensor.to(device) for tensor in dataset.tensors)
        return dataset


class ShardedBatches(Sampler[torch.Tensor]):
    """Index batches, as tensors (one slice of the split each, no per-index Python work), for process `rank` of
    `world_size`.

    `shuffle=True` (training): one permutation per epoch, cut into batches. Under DDP it is the same in every
    process (seeded by the run's seed and the epoch, which Lightning passes through `set_epoch`); process r
    takes batches r, r + W, ...; the batch list is padded, cyclically, with its first batches to a multiple of
    W, so every process takes the same number of steps, as DDP requires. A single process draws the
    permutation as torch's `RandomSampler` does (a seed from the global generator), so its order follows the
    run's seed and resumed RNG state. `shuffle=False` (evaluation): the split's batches in order, dealt out
    the same way with no padding, so each image is seen by exactly one process.
    """

    def __init__(self, size: int, batch_size: int, shuffle: bool, rank: int, world_size: int) -> None:
        self.size, self.batch_size, self.shuffle = size, batch_size, shuffle
        self.rank, self.world_size = rank, world_size
        self.seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[torch.Tensor]:
        if not self.shuffle:
            order = torch.arange(self.size)
        elif self.world_size == 1:
            seed = int(torch.empty((), dtype=torch.int64).random_().item())
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(seed))
        else:
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        batches = [chunk for chunk in order.split(self.batch_size) if len(chunk)]
        if self.shuffle and batches:
            padded = math.ceil(len(batches) / self.world_size) * self.world_size
            batches += [batches[i % len(batches)] for i in range(padded - len(batches))]  # cyclic: W may exceed them
        return batches[self.rank::self.world_size]

    def __iter__(self):
        return iter(self._batches())

    def __len__(self) -> int:  # without drawing the permutation
        total = math.ceil(self.size / self.batch_size)
        if self.shuffle and total:
            total = math.ceil(total / self.world_size) * self.world_size
        return len(range(self.rank, total, self.world_size))


def _as_float_images(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, H, W) / (N, H, W, C) / (N, C, H, W) or float images → float32 (N, C, H, W) in [0, 1]."""
    images = torch.as_tensor(images)
    if images.dim() == 3:
        images = images.unsqueeze(1)
    if images.dtype == torch.uint8:
        images = images.float().div_(255.0)
    return images.float().contiguous(), torch.as_tensor(labels, dtype=torch.long)


def _batches(dataset: TensorDataset, batch_size: int, shuffle: bool, shard: tuple[int, int] = (0, 1)) -> DataLoader:
    # A sampler of index batches + batch_size=None: one tensor slice per batch, no per-sample collate.
    rank, world_size = shard
    return DataLoader(dataset, sampler=ShardedBatches(len(dataset), batch_size, shuffle, rank, world_size),
                      batch_size=None)
