"""What an attack maximises: per-example losses `loss(logits, target) -> (N,)`.

The target is the label for every loss but `kl_divergence`, whose target is a probability vector (TRADES's
inner maximisation moves away from the clean prediction). `LOSSES` names the ones a config can choose.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from robustlab.errors import InvalidValue


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="none")


def dlr(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """−(z_y − max_{i≠y} z_i) / (z_π1 − z_π3): the margin, scaled by the spread of the top logits (Croce & Hein
    2020)."""
    ordered, _ = logits.sort(dim=1, descending=True)
    true = logits.gather(1, y[:, None]).squeeze(1)
    best_other = torch.where(ordered[:, 0] == true, ordered[:, 1], ordered[:, 0])
    return -(true - best_other) / (ordered[:, 0] - ordered[:, 2] + 1e-12)


def targeted_dlr(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """−(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2): towards class t (APGD-T's loss, Croce & Hein 2020)."""
    ordered, _ = logits.sort(dim=1, descending=True)
    true, toward = logits.gather(1, y[:, None]).squeeze(1), logits.gather(1, target[:, None]).squeeze(1)
    return -(true - toward) / (ordered[:, 0] - 0.5 * (ordered[:, 2] + ordered[:, 3]) + 1e-12)


def targeted_cross_entropy(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """−CE(logits, t): raised by moving towards class t."""
    return -F.cross_entropy(logits, target, reduction="none")


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """z_y − max_{i≠y} z_i (< 0: misclassified); Square minimises it."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    return true - logits.scatter(1, y[:, None], float("-inf")).max(dim=1).values


def kl_divergence(logits: torch.Tensor, target_probabilities: torch.Tensor) -> torch.Tensor:
    """KL(target ‖ softmax(logits)) per example."""
    return F.kl_div(F.log_softmax(logits, dim=1), target_probabilities, reduction="none").sum(dim=1)


LOSSES = {"ce": cross_entropy, "dlr": dlr}
TARGETED_LOSSES = {"ce": targeted_cross_entropy, "dlr": targeted_dlr}  # loss(logits, y, target)


def loss_function(loss: str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
    """A loss named in a config (a key of `LOSSES`) or given as a function."""
    if callable(loss):
        return loss
    if not isinstance(loss, str) or loss not in LOSSES:
        raise InvalidValue("loss", loss, f"one of {sorted(LOSSES)}")
    return LOSSES[loss]
