"""What an attack optimises and what accuracy means when the predictor is randomized.

A deterministic predictor has one output per input. A randomized one (noise injection, a random mixture)
has a distribution of outputs, and both the attack and the accuracy must be taken over that distribution,
never over one lucky draw:

- a *finite mixture* (any module with `weighted_members()`, e.g. `robustlab.defenses.MixturePredictor`) is
  handled exactly: the attack maximises the expected loss Σ α_k·CE(f_k(x), y) and accuracy is
  Σ α_k·1[f_k(x) = y];
- any other randomized predictor is handled by Expectation over Transformation (Athalye et al. 2018): the
  loss, its gradient and the accuracy are averaged over `draws` forward passes;
- a predictor that decides by a vote (any module with `vote(x)`, e.g. `robustlab.models.SmoothedClassifier`)
  is attacked by EOT through its forward pass, and scored by its vote: correct when the vote is the label
  (an abstention is never correct).

`is_randomized` tells the two kinds apart from deterministic predictors by looking at outputs only.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from robustlab.attacks.losses import cross_entropy
from robustlab.errors import is_integer, require

DEFAULT_EOT_DRAWS = 10


def draws_for(randomized: bool, accuracy_draws: int) -> int:
    """Forward passes an accuracy is averaged over: `accuracy_draws` for a randomized predictor (never one lucky
    draw), one for a deterministic one. Validation and the evaluation both count with it."""
    return accuracy_draws if randomized else 1


def weighted_members(model: nn.Module) -> list[tuple[float, nn.Module]] | None:
    # Looked up on the class: a missing attribute of a module instance costs an exception in
    # `nn.Module.__getattr__`, and attacks ask at every step.
    members = getattr(type(model), "weighted_members", None)
    return members(model) if callable(members) else None


def voting(model: nn.Module):
    """The predictor's deployed decision rule, `vote(x)` → a class per image (−1: abstain), or None."""
    vote = getattr(type(model), "vote", None)
    return vote.__get__(model) if callable(vote) else None


@torch.no_grad()
def is_randomized(model: nn.Module, x: torch.Tensor, probes: int = 8) -> bool:
    """Whether two forward passes on the same (first `probes`) inputs can differ."""
    if weighted_members(model) is not None:
        return True
    probe = x[:probes]
    return not torch.equal(model(probe), model(probe))


def per_example_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int = 1,
                     loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = cross_entropy) -> torch.Tensor:
    """`loss(logits, y)` per example (cross-entropy by default), in expectation over the predictor's randomness."""
    members = weighted_members(model)
    if members is not None:
        return torch.stack([weight * loss(member(x), y) for weight, member in members]).sum(dim=0)
    total = loss(model(x), y)
    for _ in range(draws - 1):
        total = total + loss(model(x), y)
    return total if draws == 1 else total / draws


@torch.no_grad()
def expected_logits(model: nn.Module, x: torch.Tensor, draws: int = 1) -> torch.Tensor:
    """The logits in expectation over the predictor's randomness (a mixture's Σ α_k·f_k(x); else the mean of
    `draws` passes): what a targeted attack ranks the classes by."""
    members = weighted_members(model)
    if members is not None:
        return sum(weight * member(x) for weight, member in members)
    return sum(model(x) for _ in range(draws)) / draws


@torch.no_grad()
def expected_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int = 1,
                     by_vote: bool = True) -> torch.Tensor:
    """Per example, the probability (exact, or averaged over `draws`) that the prediction is `y`; for a voting
    predictor, whether its vote is `y` (the vote's own draws replace `draws`), unless `by_vote` is false: then
    the probability that one forward pass is right, as for any randomized predictor."""
    vote = voting(model)
    if vote is not None and by_vote:
        return (vote(x) == y).float()
    members = weighted_members(model)
    if members is not None:
        return sum(weight * (member(x).argmax(1) == y).float() for weight, member in members)
    correct = torch.zeros(len(y), device=y.device)
    for _ in range(draws):
        correct += (model(x).argmax(1) == y).float()
    return correct / draws


@torch.no_grad()
def predicted_classes(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What the predictor answers for each image: its vote if it votes (−1: abstain), else the argmax of one pass."""
    vote = voting(model)
    return vote(x) if vote is not None else model(x).argmax(1)


def check_eot_samples(eot_samples: int | None) -> None:
    """The `eot_samples` argument every attack takes: draws per gradient or score, or None for automatic."""
    require(eot_samples is None or (is_integer(eot_samples) and eot_samples >= 1), "eot_samples", eot_samples,
            "an integer ≥ 1, or null to choose by detecting a randomized predictor")


def eot_draws(eot_samples: int | None, model: nn.Module, x: torch.Tensor) -> int:
    """The draws an attack averages over: `eot_samples` if set, else 10 for a randomized predictor, 1 otherwise."""
    if eot_samples is not None:
        return eot_samples
    return DEFAULT_EOT_DRAWS if is_randomized(model, x) else 1
