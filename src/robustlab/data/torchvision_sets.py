"""MNIST, Fashion-MNIST and CIFAR-10 in torchvision's on-disk formats, from a local root or a download."""

from __future__ import annotations

import gzip
import logging
import pickle
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision

from robustlab.data.base import InMemoryImageDataModule
from robustlab.errors import DataError, InvalidValue

log = logging.getLogger(__name__)


class IdxDataModule(InMemoryImageDataModule):
    """MNIST-family datasets (idx-ubyte files under `<root>/<Name>/raw/`).

    Looks, in order: in `root`; in `system_dir` (gzipped idx files, e.g. a Debian data package), which
    it decompresses into `root`; then torchvision's download (when `download` is true).
    """

    torchvision_class: Any = torchvision.datasets.MNIST
    install_hint = ""

    def __init__(self, root: str, download: bool = True, system_dir: str | None = None, **loader_options) -> None:
        super().__init__(**loader_options)
        self.root = str(root)
        self.download = download
        self.system_dir = system_dir

    @property
    def raw_dir(self) -> Path:
        return Path(self.root) / self.torchvision_class.__name__ / "raw"

    def _raw_files(self) -> list[str]:
        return [Path(url).name.removesuffix(".gz") for url, _ in self.torchvision_class.resources]

    def _has_raw_files(self) -> bool:
        return all((self.raw_dir / name).is_file() for name in self._raw_files())

    def prepare_data(self) -> None:
        if self._has_raw_files():
            return
        tried = [f"1. dataset root {self.raw_dir}/{{{','.join(self._raw_files())}}}: not there"]
        if self.system_dir is not None:
            gz_files = [Path(self.system_dir) / f"{name}.gz" for name in self._raw_files()]
            if all(path.is_file() for path in gz_files):
                self.raw_dir.mkdir(parents=True, exist_ok=True)
                for path in gz_files:
                    with gzip.open(path, "rb") as source, open(self.raw_dir / path.stem, "wb") as target:
                        shutil.copyfileobj(source, target)
                log.info(f"data: dataset.datamodule.root={self.root} held no {self.torchvision_class.__name__}; "
                      f"extracted it there from the system copy in {self.system_dir}")
                return
            tried.append(f"2. system copy {self.system_dir}/*-ubyte.gz: not there{self.install_hint}")
        if self.download:
            try:
                self.torchvision_class(self.root, train=True, download=True)
                self.torchvision_class(self.root, train=False, download=True)
                return
            except Exception as error:  # no network, a mirror down, a checksum mismatch: all end here
                tried.append(f"{len(tried) + 1}. torchvision download: failed ({type(error).__name__}: "
                             f"{str(error).strip().splitlines()[0] if str(error).strip() else ''})")
        else:
            tried.append(f"{len(tried) + 1}. torchvision download: off (set download=true to allow it)")
        raise InvalidValue("root", self.root, f"a directory holding {self.torchvision_class.__name__}; looked in\n  "
                           + "\n  ".join(tried))

    def load_split(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        self.prepare_data()
        for name in self._raw_files():
            self._check_idx_file(self.raw_dir / name)
        dataset = self.torchvision_class(self.root, train=train, download=False)
        return dataset.data, dataset.targets

    def _check_idx_file(self, path: Path) -> None:
        """An idx file's size must match what its header promises; else say which file and how to recover."""
        with open(path, "rb") as handle:
            header = handle.read(4)
            dimensions = header[3] if len(header) == 4 and header[:2] == b"\x00\x00" else 0
            sizes = np.frombuffer(handle.read(4 * dimensions), dtype=">u4") if dimensions else np.zeros(0)
        expected = 4 + 4 * dimensions + int(np.prod(sizes, dtype=np.int64)) if len(sizes) == dimensions > 0 else None
        actual = path.stat().st_size
        if expected == actual:
            return
        found = "not an idx file" if expected is None else f"{actual:,} bytes where its header promises {expected:,}"
        source = f"re-extracted from {self.system_dir}" if self.system_dir and Path(self.system_dir).is_dir() else \
            "downloaded again" if self.download else "restored (copy it again, or set download=true)"
        raise DataError(f"{path} is truncated or corrupt ({found}): delete it and run the same command again; "
                        f"it is {source}")


class MNISTDataModule(IdxDataModule):
    torchvision_class = torchvision.datasets.MNIST


class FashionMNISTDataModule(IdxDataModule):
    torchvision_class = torchvision.datasets.FashionMNIST
    install_hint = " (apt-get install dataset-fashion-mnist)"


class CIFAR10DataModule(InMemoryImageDataModule):
    """CIFAR-10's python format (`<root>/cifar-10-batches-py/{data_batch_1..5,test_batch}`).

    The batches are read directly, so a local copy needs no checksum match; a download goes through
    torchvision, which verifies it.
    """

    folder = "cifar-10-batches-py"
    train_files = [f"data_batch_{i}" for i in range(1, 6)]
    test_files = ["test_batch"]

    def __init__(self, root: str, download: bool = True, **loader_options) -> None:
        super().__init__(**loader_options)
        self.root = str(root)
        self.download = download

    def _has_batches(self) -> bool:
        return all((Path(self.root) / self.folder / name).is_file() for name in self.train_files + self.test_files)

    def prepare_data(self) -> None:
        if self._has_batches():
            return
        tried = [f"1. dataset root {Path(self.root) / self.folder}/{{data_batch_1..5,test_batch}}: not there"]
        if self.download:
            try:
                torchvision.datasets.CIFAR10(self.root, train=True, download=True)
                return
            except Exception as error:
                tried.append(f"2. torchvision download: failed ({type(error).__name__})")
        else:
            tried.append("2. torchvision download: off (set download=true to allow it)")
        raise InvalidValue("root", self.root, "a directory holding CIFAR-10; looked in\n  " + "\n  ".join(tried))

    def load_split(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        self.prepare_data()
        images, labels = [], []
        for name in self.train_files if train else self.test_files:
            path = Path(self.root) / self.folder / name
            try:
                with open(path, "rb") as handle:
                    batch = pickle.load(handle, encoding="latin1")
                if not isinstance(batch, dict) or len(batch.get("data", ())) != len(batch.get("labels", (None,))):
                    raise ValueError("not a CIFAR-10 batch")
            except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as error:
                source = "downloaded again" if self.download else "restored (copy it again, or set download=true)"
                raise DataError(f"{path} is truncated or corrupt ({type(error).__name__}: {error}): delete it and "
                                f"run the same command again; it is {source}") from None
            images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.extend(batch["labels"])
        return torch.from_numpy(np.concatenate(images)), torch.tensor(labels)
