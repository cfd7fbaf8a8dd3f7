"""Gaussian noise injection: a randomized model in training and at inference (e.g. Liu et al. 2018, RSE)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from robustlab.errors import InvalidValue, is_number, require


class NoisyModel(nn.Module):
    """`model` with N(0, σ²) noise added to its input and to the outputs of the named submodules `layers`.

    The noise is drawn on every forward pass, in train and eval mode alike: the deployed predictor is
    randomized, and attacks against it must average over the noise (EOT). Names are those of
    `model.named_modules()`, e.g. `layer1` of PreActResNet-18 or `features.2` of BasicNet.
    """

    def __init__(self, model: nn.Module, sigma: float, layers: Sequence[str] = ()) -> None:
        super().__init__()
        require(is_number(sigma) and sigma >= 0, "sigma", sigma, "a number ≥ 0 (pixel units)")
        self.model = model
        self.sigma = float(sigma)
        require(isinstance(layers, Sequence) and not isinstance(layers, str)
                and all(isinstance(name, str) for name in layers),
                "layers", layers, "a list of the model's submodule names, e.g. [layer1]")
        self.layers = list(layers)
        modules = dict(model.named_modules())
        for name in self.layers:
            if name not in modules or name == "":
                raise InvalidValue("layers", name, f"names of the model's submodules, e.g. {list(modules)[1:6]}")

    def _noisy(self, t: torch.Tensor) -> torch.Tensor:
        return t + self.sigma * torch.randn_like(t) if self.sigma > 0 else t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Hooks live for one forward pass only, so wrapping the same model again never stacks them.
        modules = dict(self.model.named_modules())
        hooks = [modules[name].register_forward_hook(lambda module, inputs, output: self._noisy(output))
                 for name in self.layers]
        try:
            return self.model(self._noisy(x))
        finally:
            for hook in hooks:
                hook.remove()

    def extra_repr(self) -> str:
        return f"sigma={self.sigma:g}, layers={self.layers}"
