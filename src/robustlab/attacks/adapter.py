"""Bring your own attack: any torchattacks attack class as a robustlab attack (torchattacks is optional)."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from robustlab.attacks.base import Attack
from robustlab.attacks.norms import DENSE, ball, project_image
from robustlab.errors import ConfigError, InvalidValue, require


def _torchattacks():
    try:
        import torchattacks
    except ImportError as error:
        raise ConfigError("attack=torchattacks needs the torchattacks package: pip install torchattacks "
                          "(or pip install 'robustlab[bench]')") from error
    return torchattacks


class TorchAttacks(Attack):
    """`torchattacks.<name>(model, **kwargs)`, with `eps` passed on when the class takes one.

    With `eps` set, the result is also projected onto the ε-ball of `norm` and into [0, 1], so the robustlab
    contract holds for any attack; with `eps: null` (e.g. CW, a minimal-perturbation attack) it is left as
    the attack returns it. The model's train/eval mode is restored afterwards (torchattacks switches to eval).
    No EOT: `eot_samples` is 1, so the audit flags its use against a randomized predictor.
    """

    def __init__(self, name: str, eps: float | None = None, norm: str = "linf",
                 kwargs: Mapping[str, Any] | None = None) -> None:
        library = _torchattacks()
        require(isinstance(kwargs, Mapping) or kwargs is None, "kwargs", kwargs,
                "keyword arguments of the torchattacks class, e.g. {steps: 20}")
        attack_class = getattr(library, name, None) if isinstance(name, str) else None
        if not inspect.isclass(attack_class) or name.startswith("_") or name in ("Attack", "MultiAttack"):
            known = sorted(n for n, c in vars(library).items() if inspect.isclass(c) and n[:1].isupper()
                           and n not in ("Attack", "MultiAttack"))
            raise InvalidValue("name", name, f"a torchattacks attack class, e.g. {', '.join(known[:12])}, ...")
        self.threat = None if eps is None else ball(norm, eps, DENSE)
        # A null keyword argument is left to the class's default (alpha, derived from a null eps, for CW).
        self.name, self.norm = name, norm
        self.kwargs = {key: value for key, value in (kwargs or {}).items() if value is not None}
        self.eps = None if eps is None else float(eps)  # type: ignore[assignment]  # None: unbounded
        self.eot_samples = 1
        self.attack_class: Any = attack_class  # a torchattacks class, checked above
        self.takes_eps = "eps" in inspect.signature(attack_class.__init__).parameters

    def attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int) -> torch.Tensor:
        extra = {"eps": self.eps} if self.takes_eps and self.eps is not None else {}
        was_training = model.training
        try:
            x_adv = self.attack_class(model, **extra, **self.kwargs)(x, y).detach()
        finally:
            model.train(was_training)
        if self.threat is not None and self.eps is not None:
            x_adv = project_image(x, x_adv, self.threat, self.eps)
        return x_adv.clamp(0.0, 1.0)

    def __repr__(self) -> str:
        return f"TorchAttacks({self.name}, eps={self.eps}, norm={self.norm}, kwargs={self.kwargs})"
