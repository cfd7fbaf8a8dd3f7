"""Which wrong classes a targeted attack runs towards, in what order.

- `most_likely_wrong_classes`: by the expected logits of the clean image, highest first (AutoAttack's APGD-T and
  FAB-T);
- `nearest_boundaries`: by the linearized distance to each class's decision boundary, nearest first (MALT,
  Melamed et al. 2024): for target t, (z_y − z_t) / ‖∇ₓ(z_t − z_y)‖_q, with q the dual of the threat's norm
  (1 for L∞, 2 for L2). A class with a high logit behind a flat boundary ranks after a lower one that a small
  step reaches: the ranking spends each targeted run where the boundary is closest.

Both look at the clean image and take the predictor's randomness in expectation (`expectation`).
"""

from __future__ import annotations

import torch
from torch import nn

from robustlab.attacks.expectation import expected_logits
from robustlab.attacks.gradient import loss_and_gradient

DUAL_NORMS = {"linf": 1.0, "l2": 2.0, "l1": float("inf")}
# The classes whose boundaries `nearest_boundaries` measures, by logit: one gradient each. MALT's default for
# 10 classes is all 9; on 100 or 1000 classes the distant ones are never the nearest in practice.
CANDIDATES = 9


def most_likely_wrong_classes(model: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int, count: int
                              ) -> list[torch.Tensor]:
    """Per rank r < `count` (at most classes − 1), each image's r-th most likely class other than its label, by
    the expected logits: the targets of APGD-T and FAB-T, in turn."""
    ranked = wrong_classes_by_logit(expected_logits(model, x, draws), y)
    return [ranked[:, rank] for rank in range(min(count, ranked.shape[1]))]


def wrong_classes_by_logit(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per image, the classes other than its label, highest logit first (N × (classes − 1))."""
    return logits.scatter(1, y[:, None], float("-inf")).argsort(dim=1, descending=True)[:, :-1]


def nearest_boundaries(model: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int, count: int, norm: str
                       ) -> list[torch.Tensor]:
    """Per rank r < `count`, each image's class with the r-th smallest linearized distance to its boundary with
    the label, among its `CANDIDATES` most likely wrong classes (MALT's ranking; one gradient per candidate)."""
    candidates = wrong_classes_by_logit(expected_logits(model, x, draws), y)[:, :CANDIDATES]
    distances = torch.stack([linearized_distance(model, x, y, candidates[:, column], draws, norm)
                             for column in range(candidates.shape[1])], dim=1)
    order = candidates.gather(1, distances.argsort(dim=1, stable=True))
    return [order[:, rank] for rank in range(min(count, order.shape[1]))]


def linearized_distance(model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor, draws: int,
                        norm: str) -> torch.Tensor:
    """(z_y − z_t) / ‖∇ₓ(z_t − z_y)‖_q per image: the size of the step, in the threat's norm, that makes class t
    overtake the label on the linearized model (≤ 0 where t is already ahead; inf where the gradient is 0)."""
    def difference(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return logits.gather(1, target[:, None])[:, 0] - logits.gather(1, labels[:, None])[:, 0]

    value, gradient = loss_and_gradient(model, x, y, draws, difference)
    steepness = gradient.flatten(1).norm(p=DUAL_NORMS[norm], dim=1)
    return torch.where(steepness > 0, -value / steepness.clamp_min(1e-12), torch.full_like(value, float("inf")))
