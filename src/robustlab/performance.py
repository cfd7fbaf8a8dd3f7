"""`performance.*`: how a model is laid out and compiled for speed, without changing its weights or checkpoints."""

from __future__ import annotations

import logging

import torch
from torch import nn

from robustlab.defenses.base import Defense

log = logging.getLogger(__name__)


def speed_up(model: nn.Module, defense: Defense, channels_last: bool = False, compile: bool = False,
             on_cpu: bool = True) -> None:
    """`performance.*`: NHWC convolutions (faster on CPUs' oneDNN and GPUs' tensor cores); `torch.compile` in
    place, so state-dict keys (and checkpoints) are unchanged.

    On the CPU, a network with a 1×1 convolution (the shortcuts of WRN and PreAct ResNet) stays NCHW: oneDNN's
    AVX2 kernel for a channels-last 1×1 convolution's weight gradient hangs or corrupts memory on CPUs without
    AVX-512 (seen with PyTorch 2.14.1 on an AMD EPYC); the fallback is said in one line."""
    if channels_last and on_cpu and has_pointwise_convolution(model, defense):
        log.warning("performance.channels_last=true is not applied: on the CPU, oneDNN's channels-last 1×1 "
                    "convolution backward (this network's shortcuts) can hang; the network runs NCHW")
    elif channels_last:
        model.to(memory_format=torch.channels_last)
        defense.to(memory_format=torch.channels_last)
    if compile:
        model.compile()


def has_pointwise_convolution(*modules: nn.Module) -> bool:
    return any(isinstance(layer, nn.Conv2d) and tuple(layer.kernel_size) == (1, 1)
               for module in modules for layer in module.modules())
