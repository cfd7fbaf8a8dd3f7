"""Preprocessing in front of a classifier, and BPDA for the steps that have no useful gradient.

A step like bit-depth reduction (Xu et al. 2018) is piecewise constant: its input gradient is zero almost
everywhere, so a gradient attack through it learns nothing and the defense looks robust when it is not
(obfuscated gradients, Athalye et al. 2018). Such a step is a `NonDifferentiable` module with a
differentiable stand-in (the identity by default): inside `backward_through_stand_ins(model)`, its forward
pass is unchanged and its backward pass is the stand-in's (BPDA). The evaluation runs every attack and the
audit inside it (`eval.bpda`, on by default).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from robustlab.errors import is_integer, require


class NonDifferentiable(nn.Module):
    """A preprocessing step (`transform`) with a differentiable stand-in for its backward pass under BPDA."""

    def __init__(self, stand_in: nn.Module | None = None) -> None:
        super().__init__()
        self.stand_in = nn.Identity() if stand_in is None else stand_in
        self.bpda = False  # set by `backward_through_stand_ins`

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.transform(x)
        if not self.bpda:
            return out
        approximation = self.stand_in(x)
        return approximation + (out - approximation).detach()  # forward: out; backward: the stand-in's


class BitDepthReduction(NonDifferentiable):
    """Each pixel rounded to one of 2^bits levels in [0, 1] (Xu et al. 2018's feature squeezing)."""

    def __init__(self, bits: int, stand_in: nn.Module | None = None) -> None:
        super().__init__(stand_in)
        require(is_integer(bits) and 1 <= bits <= 16, "bits", bits, "an integer in [1, 16]")
        self.bits = bits

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        levels = 2 ** self.bits - 1
        return torch.round(x.clamp(0, 1) * levels) / levels

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


class Preprocessed(nn.Module):
    """`model(preprocess(x))`: what a preprocessing defense deploys."""

    def __init__(self, model: nn.Module, preprocess: nn.Module) -> None:
        super().__init__()
        require(isinstance(preprocess, nn.Module), "preprocess", preprocess, "a module config (_target_: ...)")
        self.preprocess, self.model = preprocess, model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.preprocess(x))


@contextmanager
def backward_through_stand_ins(model: nn.Module, enabled: bool = True):
    """BPDA for the duration: every `NonDifferentiable` step of `model` differentiates as its stand-in."""
    steps = [module for module in model.modules() if isinstance(module, NonDifferentiable)] if enabled else []
    before = [step.bpda for step in steps]
    for step in steps:
        step.bpda = True
    try:
        yield
    finally:
        for step, value in zip(steps, before):
            step.bpda = value
