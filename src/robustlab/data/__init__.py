"""LightningDataModules over in-memory tensors."""

from robustlab.data.base import InMemoryImageDataModule
from robustlab.data.synthetic import SyntheticDataModule
from robustlab.data.torchvision_sets import CIFAR10DataModule, FashionMNISTDataModule, MNISTDataModule

__all__ = ["CIFAR10DataModule", "FashionMNISTDataModule", "InMemoryImageDataModule", "MNISTDataModule",
           "SyntheticDataModule"]
