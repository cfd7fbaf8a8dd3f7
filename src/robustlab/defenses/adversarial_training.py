"""Training on an attack's examples through a deployed wrapper: standard, adversarial, fast adversarial, noise."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.defenses.base import Defense, TrainingLoss, check_selection_metric
from robustlab.errors import require


class AdversarialTraining(Defense):
    """Training on `attack`'s examples (none: clean images) through `wrapper`, which is also deployed.

    - `attack=None, wrapper=None` is standard training (`defense=none`);
    - `attack` (a training attack, e.g. PGD-7) is adversarial training (Madry et al. 2018), and with a
      one-step random-start attack, fast adversarial training (Wong et al. 2020);
    - `wrapper` (a module factory, e.g. a partial `NoisyModel`) turns the model into the deployed
      predictor; training, the training attack and every evaluation attack all go through it.
    """

    def __init__(self, selection_metric: str = "val/acc", attack: Callable | None = None,
                 wrapper: Callable[[nn.Module], nn.Module] | None = None) -> None:
        super().__init__()
        require(attack is None or callable(attack), "attack", attack,
                "an attack config (an option of conf/attack), or null")
        require(wrapper is None or callable(wrapper), "wrapper", wrapper,
                "a partial module config (_partial_: true) that wraps the model, or null")
        self.selection_metric = check_selection_metric(selection_metric)
        self.attack = attack
        self.wrapper = wrapper

    def training_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> TrainingLoss:
        predictor = self.wrap(model)
        if self.attack is not None:
            x = self.attack(predictor, x, y)
        logits = predictor(x)
        return TrainingLoss(F.cross_entropy(logits, y), logits)

    def wrap(self, model: nn.Module) -> nn.Module:
        return model if self.wrapper is None else self.wrapper(model)

    def extra_repr(self) -> str:
        parts = [f"attack={self.attack!r}"] if self.attack is not None else []
        if self.wrapper is not None:
            parts.append(f"wrapper={self.wrapper!r}")
        return ", ".join(parts)
