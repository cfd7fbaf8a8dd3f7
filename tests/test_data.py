"""Datasets: the real on-disk formats (written small by the tests), the offline Fashion-MNIST path, errors."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FASHION_MNIST_SYSTEM_DIR

from robustlab.data import CIFAR10DataModule, FashionMNISTDataModule, MNISTDataModule, SyntheticDataModule
from robustlab.errors import InvalidValue

IDX_NAMES = {True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def idx_bytes(array: np.ndarray) -> bytes:
    """The idx format (LeCun's MNIST files): magic (0, 0, dtype 0x08, ndim), big-endian dims, data."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def make_idx_split(rng, count: int) -> tuple[np.ndarray, np.ndarray]:
    return rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8), rng.integers(0, 10, size=count, dtype=np.uint8)


def write_idx_files(folder: Path, compress: bool, rng) -> dict[bool, tuple[np.ndarray, np.ndarray]]:
    folder.mkdir(parents=True, exist_ok=True)
    splits = {True: make_idx_split(rng, 40), False: make_idx_split(rng, 12)}
    for train, (images, labels) in splits.items():
        for name, array in zip(IDX_NAMES[train], (images, labels)):
            payload = idx_bytes(array)
            if compress:
                with gzip.open(folder / f"{name}.gz", "wb") as handle:
                    handle.write(payload)
            else:
                (folder / name).write_bytes(payload)
    return splits


def loader_options(val_size: int = 8) -> dict:
    return {"batch_size": 16, "eval_batch_size": 16, "val_size": val_size}


def all_images(loader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


def test_mnist_reads_idx_files_from_root(tmp_path):
    splits = write_idx_files(tmp_path / "MNIST" / "raw", compress=False, rng=np.random.default_rng(0))
    datamodule = MNISTDataModule(root=str(tmp_path), download=False, **loader_options())
    datamodule.setup()
    images, labels = all_images(datamodule.test_dataloader())
    expected_images, expected_labels = splits[False]
    assert images.shape == (12, 1, 28, 28) and images.dtype == torch.float32
    assert torch.equal(images, torch.from_numpy(expected_images).float().unsqueeze(1) / 255)
    assert torch.equal(labels, torch.from_numpy(expected_labels).long())
    assert len(datamodule.train_set) + len(datamodule.val_set) == 40


def test_fashion_mnist_decompresses_the_system_copy(tmp_path):
    system_dir = tmp_path / "system"
    splits = write_idx_files(system_dir, compress=True, rng=np.random.default_rng(1))
    root = tmp_path / "root"
    datamodule = FashionMNISTDataModule(root=str(root), system_dir=str(system_dir), download=False, **loader_options())
    datamodule.setup()
    assert (root / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").is_file()
    images, labels = all_images(datamodule.test_dataloader())
    assert torch.equal(labels, torch.from_numpy(splits[False][1]).long())
    assert images.max() <= 1.0 and images.min() >= 0.0


def test_missing_dataset_names_every_place_looked(tmp_path):
    datamodule = FashionMNISTDataModule(root=str(tmp_path / "empty"), system_dir=str(tmp_path / "no_system"),
                                        download=False, **loader_options())
    with pytest.raises(InvalidValue) as error:
        datamodule.setup()
    message = str(error.value)
    assert error.value.field == "root"
    assert str(tmp_path / "empty") in message
    assert str(tmp_path / "no_system") in message and "apt-get install dataset-fashion-mnist" in message
    assert "download" in message


def write_cifar_batches(folder: Path, rng) -> dict[str, tuple[np.ndarray, list[int]]]:
    folder.mkdir(parents=True)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(6, 3 * 32 * 32), dtype=np.uint8)
        labels = rng.integers(0, 10, size=6).tolist()
        with open(folder / name, "wb") as handle:
            pickle.dump({"data": data, "labels": labels, "batch_label": name}, handle)
        written[name] = (data, labels)
    return written


def test_cifar10_reads_python_batches(tmp_path):
    written = write_cifar_batches(tmp_path / "cifar-10-batches-py", np.random.default_rng(2))
    datamodule = CIFAR10DataModule(root=str(tmp_path), download=False, **loader_options())
    datamodule.setup()
    images, labels = all_images(datamodule.test_dataloader())
    data, expected_labels = written["test_batch"]
    assert images.shape == (6, 3, 32, 32)
    assert torch.equal(images, torch.from_numpy(data.reshape(6, 3, 32, 32)).float() / 255)
    assert labels.tolist() == expected_labels
    assert len(datamodule.train_set) + len(datamodule.val_set) == 30


def test_cifar10_missing_names_root_and_download(tmp_path):
    with pytest.raises(InvalidValue, match="download"):
        CIFAR10DataModule(root=str(tmp_path), download=False, **loader_options()).setup()


def test_synthetic_is_deterministic_and_split_is_disjoint():
    first, second = SyntheticDataModule(val_size=64), SyntheticDataModule(val_size=64)
    first.setup(), second.setup()
    assert torch.equal(first.train_set.tensors[0], second.train_set.tensors[0])
    assert len(first.train_set) == 640 - 64 and len(first.val_set) == 64 and len(first.test_set) == 256
    train_rows = {tuple(row.tolist()) for row in first.train_set.tensors[0].flatten(1)[:, :16]}
    val_rows = {tuple(row.tolist()) for row in first.val_set.tensors[0].flatten(1)[:, :16]}
    assert not train_rows & val_rows


def test_test_loader_limit_takes_the_first_images_in_order():
    datamodule = SyntheticDataModule(val_size=64, eval_batch_size=50)
    datamodule.setup()
    images, _ = all_images(datamodule.test_dataloader(limit=70))
    assert torch.equal(images, datamodule.test_set.tensors[0][:70])


def test_real_fashion_mnist_loads_offline(tmp_path):
    assert FASHION_MNIST_SYSTEM_DIR.is_dir(), "install the Debian package: apt-get install dataset-fashion-mnist"
    datamodule = FashionMNISTDataModule(root=str(tmp_path), system_dir=str(FASHION_MNIST_SYSTEM_DIR), download=False)
    datamodule.setup()
    assert len(datamodule.train_set) == 55000 and len(datamodule.val_set) == 5000 and len(datamodule.test_set) == 10000
    x, y = next(iter(datamodule.train_dataloader()))
    assert x.shape == (128, 1, 28, 28) and y.dtype == torch.long
    assert 0.25 < datamodule.test_set.tensors[0].mean() < 0.32  # Fashion-MNIST's mean pixel is 0.286
