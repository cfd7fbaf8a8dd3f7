"""A randomized mixture of classifiers (Pinot et al. 2020; Araujo et al. 2020), trained by boosted adversarial
training."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.defenses.base import Defense, Stage, TrainingLoss, check_epochs, check_selection_metric, evaluation_mode
from robustlab.errors import is_number, require


class MixturePredictor(nn.Module):
    """Member k answers with probability α_k, drawn independently for each input.

    `weighted_members()` lets attacks take the expected loss Σ α_k·CE(f_k(x), y) and lets evaluation report
    the exact expected accuracy Σ α_k·acc_k (see `robustlab.attacks.expectation`).
    """

    def __init__(self, members: Sequence[nn.Module], weights: Sequence[float]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.weights = [float(weight) for weight in weights]

    def weighted_members(self) -> list[tuple[float, nn.Module]]:
        return list(zip(self.weights, self.members))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.stack([member(x) for member in self.members])  # members × batch × classes
        probabilities = torch.tensor(self.weights, device=x.device)
        drawn = torch.multinomial(probabilities, len(x), replacement=True)
        return logits[drawn, torch.arange(len(x), device=x.device)]


def _fresh_copy(module: nn.Module) -> nn.Module:
    """Same architecture, newly initialised weights."""
    fresh = copy.deepcopy(module)
    for submodule in fresh.modules():
        reset = getattr(submodule, "reset_parameters", None)
        if callable(reset):
            reset()
    return fresh


class RandomMixture(Defense):
    """K = len(weights) members; the model being trained is member 1, `member` (the same architecture) and its
    fresh copies are members 2…K. Stage k trains member k, all earlier members frozen, on `attack`'s examples
    against the mixture of members 1…k−1 (weights renormalised); member 1 is plain adversarial training.
    Boosting trains one member against the members before it, not through the deployed mixture of all K.
    """

    def __init__(self, member: nn.Module, weights: Sequence[float], attack: Callable,
                 epochs_per_member: int | None = None, selection_metric: str = "val/robust_acc") -> None:
        super().__init__()
        self.selection_metric = check_selection_metric(selection_metric)
        require(callable(attack), "attack", attack, "an attack config (an option of conf/attack)")
        self.attack = attack
        check_epochs(epochs_per_member=epochs_per_member)
        require(isinstance(member, nn.Module), "member", member, "a model config (the default: ${model})")
        require(isinstance(weights, Sequence) and not isinstance(weights, str) and len(weights) >= 1
                and all(is_number(weight) and weight > 0 for weight in weights) and abs(sum(weights) - 1) < 1e-6,
                "weights", weights, "a list of K ≥ 1 positive numbers summing to 1")
        weights = [float(weight) for weight in weights]
        others = [] if len(weights) == 1 else [member] + [_fresh_copy(member) for _ in range(len(weights) - 2)]
        self.others = nn.ModuleList(others)
        self.weights = weights
        self.epochs_per_member = epochs_per_member

    def stages(self) -> list[Stage]:
        return [Stage(f"member{k + 1}", self.epochs_per_member, self.selection_metric)
                for k in range(len(self.weights))]

    def members(self, model: nn.Module) -> list[nn.Module]:
        return [model, *self.others]

    def mixture(self, model: nn.Module, count: int) -> MixturePredictor:
        """The mixture of the first `count` members, weights renormalised."""
        total = sum(self.weights[:count])
        return MixturePredictor(self.members(model)[:count], [weight / total for weight in self.weights[:count]])

    def trainable_parameters(self, model: nn.Module) -> Iterator[nn.Parameter]:
        yield from self.members(model)[self.stage].parameters()

    def training_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> TrainingLoss:
        members = self.members(model)
        member = members[self.stage]
        if self.stage == 0:
            x_adv = self.attack(member, x, y)
        else:
            with evaluation_mode(*members[:self.stage]):
                x_adv = self.attack(self.mixture(model, self.stage), x, y)
        logits = member(x_adv)
        return TrainingLoss(F.cross_entropy(logits, y), logits)

    def wrap(self, model: nn.Module) -> nn.Module:
        return self.mixture(model, self.stage + 1)

    def extra_repr(self) -> str:
        return f"weights={self.weights}, attack={self.attack!r}"
