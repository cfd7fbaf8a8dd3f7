"""Classifiers. Each takes [0, 1] images; normalization is its first layer."""

from robustlab.models.basic_net import BasicNet
from robustlab.models.normalization import Normalize
from robustlab.models.wide_resnet import WideResNet

__all__ = ["BasicNet", "Normalize", "WideResNet"]
