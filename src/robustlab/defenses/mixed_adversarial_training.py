"""Adversarial training against several threat models at once (Tramèr & Boneh 2019), e.g. L∞ and L2; with the
`alternate` strategy over L1 and L∞, E-AT (Croce & Hein 2022)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.defenses.base import Defense, TrainingLoss, check_selection_metric
from robustlab.errors import InvalidValue, require

Attacks = Mapping[str, Callable]


def per_attack_losses(attacks: Attacks, predictor: nn.Module, x: torch.Tensor, y: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example cross-entropy (attacks × batch) on each attack's examples, and the logits."""
    logits = torch.stack([predictor(attack(predictor, x, y)) for attack in attacks.values()])
    losses = torch.stack([F.cross_entropy(one, y, reduction="none") for one in logits])
    return losses, logits


def worst_of_attacks(attacks: Attacks, predictor: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int
                     ) -> TrainingLoss:
    """`max`: each example's highest loss over the attacks' examples."""
    losses, logits = per_attack_losses(attacks, predictor, x, y)
    worst = losses.argmax(dim=0)
    chosen = logits.gather(0, worst.view(1, -1, 1).expand(1, *logits.shape[1:])).squeeze(0)
    return TrainingLoss(losses.max(dim=0).values.mean(), chosen)


def mean_of_attacks(attacks: Attacks, predictor: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int
                    ) -> TrainingLoss:
    """`avg`: the mean of the attacks' losses."""
    losses, logits = per_attack_losses(attacks, predictor, x, y)
    return TrainingLoss(losses.mean(), logits[0])


def one_random_attack(attacks: Attacks, predictor: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int
                      ) -> TrainingLoss:
    """`random`: one attack, drawn uniformly, per batch."""
    return one_attack(list(attacks.values())[int(torch.randint(len(attacks), ()))], predictor, x, y)


def attacks_in_turn(attacks: Attacks, predictor: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int
                    ) -> TrainingLoss:
    """`alternate`: the attacks in turn, one per batch (E-AT's alternation of L1 and L∞ batches)."""
    return one_attack(list(attacks.values())[batch % len(attacks)], predictor, x, y)


def one_attack(attack: Callable, predictor: nn.Module, x: torch.Tensor, y: torch.Tensor) -> TrainingLoss:
    logits = predictor(attack(predictor, x, y))
    return TrainingLoss(F.cross_entropy(logits, y), logits)


STRATEGIES = {"max": worst_of_attacks, "avg": mean_of_attacks, "random": one_random_attack,
              "alternate": attacks_in_turn}


class MixedAdversarialTraining(Defense):
    """Adversarial training on `attacks`' examples, combined by `strategy` (a key of `STRATEGIES`)."""

    def __init__(self, attacks: Attacks, strategy: str = "max", selection_metric: str = "val/robust_acc") -> None:
        super().__init__()
        self.selection_metric = check_selection_metric(selection_metric)
        if not isinstance(strategy, str) or strategy not in STRATEGIES:
            raise InvalidValue("strategy", strategy, f"one of {list(STRATEGIES)}")
        require(isinstance(attacks, Mapping) and len(attacks) >= 1 and all(callable(a) for a in attacks.values()),
                "attacks", attacks, "at least one training attack config")
        self.attacks = dict(attacks)
        self.strategy = strategy
        self.batches = 0  # training batches seen by this process (`alternate` turns on it)

    def training_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> TrainingLoss:
        batch, self.batches = self.batches, self.batches + 1
        return STRATEGIES[self.strategy](self.attacks, self.wrap(model), x, y, batch)

    def extra_repr(self) -> str:
        return f"strategy={self.strategy}, attacks={self.attacks!r}"
