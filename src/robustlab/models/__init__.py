"""Classifiers and the modules defenses put around them. Each takes [0, 1] images; normalization is inside."""

from robustlab.models.basic_net import BasicNet
from robustlab.models.dncnn import DnCNN
from robustlab.models.linear import LinearClassifier
from robustlab.models.noise import NoisyModel
from robustlab.models.normalization import Normalize
from robustlab.models.preact_resnet import PreActResNet18
from robustlab.models.preprocessing import BitDepthReduction, Preprocessed
from robustlab.models.small_cnn import SmallCNN
from robustlab.models.smoothing import SmoothedClassifier
from robustlab.models.wide_resnet import WideResNet

__all__ = ["BasicNet", "BitDepthReduction", "DnCNN", "LinearClassifier", "NoisyModel", "Normalize", "Preprocessed",
           "PreActResNet18", "SmallCNN", "SmoothedClassifier", "WideResNet"]
