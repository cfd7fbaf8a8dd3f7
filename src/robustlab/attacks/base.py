"""The attack contract, written once: what every attack declares, its shared preamble, and keeping the worst point.

An attack is called as `attack(model, x, y) -> x_adv` with images in [0, 1]. It returns a detached tensor
inside the ε-ball of `norm` around `x` and inside [0, 1]; it never modifies `x`, never changes the model's
train/eval mode and never touches parameter gradients. Every attack declares:

- `eps`: its budget in pixel units (0: the attack returns `x`);
- `norm`: the threat model, "linf" or "l2" ("mixed" for a cascade over both);
- `eot_samples`: forward passes averaged per gradient or score on a randomized predictor (EOT), or None to
  choose automatically (10 on a randomized predictor, 1 otherwise: `expectation.eot_draws`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from robustlab.attacks.batching import chunks
from robustlab.attacks.expectation import eot_draws
from robustlab.attacks.norms import NORMS

# The threat model's float tolerance: x′ is inside the ε-ball when ‖x′ − x‖ ≤ ε·(1 + EPS_RELATIVE_TOLERANCE) +
# ABSOLUTE_TOLERANCE in the attack's norm, and inside [0, 1] within ABSOLUTE_TOLERANCE (float32 rounds
# ε = 0.1 to 0.10000000149).
EPS_RELATIVE_TOLERANCE = 1e-5
ABSOLUTE_TOLERANCE = 1e-6


def per_example(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-example vector shaped to broadcast against a batch `like` (N × C × H × W)."""
    return values.view(-1, *([1] * (like.dim() - 1)))


class Attack:
    """The base of every attack: `__call__` runs the contract's preamble and hands `attack` one chunk.

    The preamble: detach `x`; return a copy of `x` when the budget is 0; choose the EOT draws once for the
    whole batch; on the CPU, attack eval-mode batches in chunks of `chunk_size` images (`batching.chunks`).
    `progress`, when set (the evaluation sets it for the duration of a pass), is told the fraction of the
    current call done: after each chunk, and after each step of the iterative attacks (`advance`).
    """

    eps: float = 0.0
    norm: str = "linf"
    eot_samples: int | None = 1
    chunk_size: int | None = None
    progress: Callable[[float], None] | None = None
    _span: tuple[float, float] = (0.0, 1.0)  # the current chunk's share of the call: (start, width)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = x.detach()
        if self.does_nothing():
            return x.clone()
        draws = eot_draws(self.eot_samples, model, x)
        parts = chunks(model, x, self.chunk_size)
        done = []
        for index, part in enumerate(parts):
            self._span = (index / len(parts), 1 / len(parts))
            done.append(self.attack(model, x[part], y[part], draws))
            self.advance(1.0)
        return done[0] if len(done) == 1 else torch.cat(done)

    def advance(self, fraction: float) -> None:
        """Tell `progress` that `fraction` of the current chunk is done (no device synchronisation)."""
        if self.progress is not None:
            start, width = self._span
            self.progress(start + width * fraction)

    def does_nothing(self) -> bool:
        """Whether the attack's settings leave every image as it is (a budget of 0)."""
        return self.eps == 0

    def balls(self) -> list[tuple[str, float]]:
        """The threat model as (norm, ε) balls; a returned image must lie in one of them. None for an unbounded
        attack (`eps: null`), whose images are only checked to be finite and in [0, 1]."""
        return [(self.norm, float(self.eps))] if self.eps is not None and self.norm in NORMS else []

    def attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int) -> torch.Tensor:
        """The adversarial examples for one chunk, each loss or score averaged over `draws` passes."""
        raise NotImplementedError

    def with_eot_samples(self, eot_samples: int | None) -> Attack:
        """A copy of this attack with `eot_samples` set (the original is unchanged)."""
        changed = copy.copy(self)
        changed.eot_samples = eot_samples
        return changed


class WorstSoFar:
    """Per example, the point worst for the model found so far, by a score where lower is worse.

    A score is a vector (one number per example) or a matrix compared row by row lexicographically
    (e.g. PGD's restarts: misclassified first, then the higher loss).
    """

    def __init__(self, x: torch.Tensor, score: torch.Tensor) -> None:
        self.x, self.score = x.clone(), score.clone()

    def offer(self, candidate: torch.Tensor, score: torch.Tensor, index: torch.Tensor | None = None) -> None:
        """Keep `candidate` (for the examples `index`, all if None) where its score is lower."""
        if index is None:
            better = lexicographically_lower(score, self.score)
            self.x = torch.where(per_example(better, self.x), candidate, self.x)
            self.score = torch.where(per_example(better, self.score), score, self.score)
            return
        better = lexicographically_lower(score, self.score[index])
        self.x[index[better]] = candidate[better]
        self.score[index[better]] = score[better]


def lexicographically_lower(score: torch.Tensor, than: torch.Tensor) -> torch.Tensor:
    """Per example, whether `score` is lower than `than` (vectors, or matrices compared row by row, column by
    column)."""
    if score.dim() == 1:
        return score < than
    lower, tied = torch.zeros_like(score[:, 0], dtype=torch.bool), torch.ones_like(score[:, 0], dtype=torch.bool)
    for column in range(score.shape[1]):
        lower |= tied & (score[:, column] < than[:, column])
        tied &= score[:, column] == than[:, column]
    return lower


def outside_threat_model(balls: list[tuple[str, float]], x: torch.Tensor, x_adv: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, whether `x_adv` breaks the threat model `balls` around the clean `x` (not finite, outside [0, 1],
    or outside every (norm, ε) ball, each within the stated tolerance; no balls: an unbounded attack, only held to
    finite images in [0, 1]), and its perturbation's size in the first ball's norm (inf for a non-finite image, 0
    without balls): what the evaluation checks after every attack, against the attack's configured budget."""
    flat, delta = x_adv.flatten(1), (x_adv - x).flatten(1).nan_to_num(nan=float("inf"))
    bad = ~torch.isfinite(flat).all(dim=1)
    bad |= ((flat < -ABSOLUTE_TOLERANCE) | (flat > 1 + ABSOLUTE_TOLERANCE)).any(dim=1)
    sizes = [NORMS[norm].size(delta) for norm, _ in balls]
    if balls:
        inside = torch.stack([size <= eps * (1 + EPS_RELATIVE_TOLERANCE) + ABSOLUTE_TOLERANCE
                              for size, (_, eps) in zip(sizes, balls)]).any(dim=0)
        bad |= ~inside
    return bad, sizes[0] if sizes else torch.zeros(len(x), device=x.device)


def within_balls(ball: tuple[str, float], threat_model: list[tuple[str, float]]) -> bool:
    """Whether the (norm, ε) `ball` lies inside one of `threat_model`'s balls: a ball of radius 0, or one of the
    same norm and a radius at most that ball's (within the stated tolerance)."""
    norm, eps = ball
    return eps == 0 or any(norm == other and eps <= limit * (1 + EPS_RELATIVE_TOLERANCE) + ABSOLUTE_TOLERANCE
                           for other, limit in threat_model)
