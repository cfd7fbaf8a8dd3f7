"""Adversarial training against several threat models at once (Tramèr & Boneh 2019), e.g. L∞ and L2."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.defenses.base import Defense, TrainingLoss
from robustlab.errors import InvalidValue, require

STRATEGIES = ("max", "avg", "random")


class MixedAdversarialTraining(Defense):
    """`max`: each example's worst of the attacks' examples; `avg`: the mean of the attacks' losses;
    `random`: one attack, drawn uniformly, per batch."""

    def __init__(self, attacks: Mapping[str, Callable], strategy: str = "max",
                 selection_metric: str = "val/robust_acc") -> None:
        super().__init__(selection_metric)
        if not isinstance(strategy, str) or strategy not in STRATEGIES:
            raise InvalidValue("strategy", strategy, f"one of {list(STRATEGIES)}")
        require(isinstance(attacks, Mapping) and len(attacks) >= 1 and all(callable(a) for a in attacks.values()),
                "attacks", attacks, "at least one training attack config")
        self.attacks = dict(attacks)
        self.strategy = strategy

    def adversarial_losses(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor
                           ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per attack: per-example cross-entropy on its adversarial examples, and the logits."""
        losses = {}
        for name, attack in self.attacks.items():
            logits = model(attack(model, x, y))
            losses[name] = (F.cross_entropy(logits, y, reduction="none"), logits)
        return losses

    def training_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> TrainingLoss:
        if self.strategy == "random":
            name = list(self.attacks)[int(torch.randint(len(self.attacks), ()))]
            logits = model(self.attacks[name](model, x, y))
            return TrainingLoss(F.cross_entropy(logits, y), logits)
        per_attack = self.adversarial_losses(model, x, y)
        losses = torch.stack([loss for loss, _ in per_attack.values()])  # attacks × batch
        logits = torch.stack([logits for _, logits in per_attack.values()])
        if self.strategy == "avg":
            return TrainingLoss(losses.mean(), logits[0])
        worst = losses.argmax(dim=0)
        chosen = logits.gather(0, worst.view(1, -1, 1).expand(1, *logits.shape[1:])).squeeze(0)
        return TrainingLoss(losses.max(dim=0).values.mean(), chosen)

    def extra_repr(self) -> str:
        return f"strategy={self.strategy}, attacks={self.attacks!r}"
