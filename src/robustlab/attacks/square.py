"""Square Attack (Andriushchenko et al. 2020): score-based black-box random search with square-shaped updates.

It never looks at gradients, only at the predictor's outputs, so gradient masking does not stop it: on an
honest model it should do no better than the white-box attacks (the gradient-masking audit checks this).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from robustlab.attacks.base import Attack, WorstSoFar
from robustlab.attacks.expectation import check_eot_samples, per_example_loss
from robustlab.attacks.losses import margin
from robustlab.attacks.norms import L1Ball, L2Ball, LinfBall, ball, project_image
from robustlab.attacks.square_l1 import l1_move, l1_start, random_windows
from robustlab.errors import is_integer, is_number, require

# Fraction of the image a square covers, halved at these shares of a 10,000-query budget (the paper's schedule).
_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def square_fraction(p_init: float, iteration: int, queries: int) -> float:
    scaled = int(iteration / queries * 10_000)
    return p_init / 2 ** sum(scaled > mark for mark in _HALVINGS)


def _stripes(x: torch.Tensor) -> torch.Tensor:
    """±1 per (image, channel, column): vertical stripes."""
    n, c, _, w = x.shape
    return torch.randint(0, 2, (n, c, 1, w), device=x.device, dtype=x.dtype) * 2 - 1


def _linf_start(x: torch.Tensor, eps: float) -> torch.Tensor:
    return eps * _stripes(x)


def _l2_start(x: torch.Tensor, eps: float) -> torch.Tensor:
    return L2Ball.project(_stripes(x).expand_as(x) * eps, eps)


def _linf_move(delta: torch.Tensor, window: torch.Tensor, side: int, eps: float) -> torch.Tensor:
    """A new ±ε value per channel inside the window."""
    n, c = delta.shape[:2]
    values = (torch.randint(0, 2, (n, c, 1, 1), device=delta.device, dtype=delta.dtype) * 2 - 1) * eps
    return torch.where(window, values.expand_as(delta), delta)


def _l2_move(delta: torch.Tensor, window: torch.Tensor, side: int, eps: float) -> torch.Tensor:
    """A Gaussian square added inside the window, the whole perturbation rescaled onto the ε-sphere."""
    h, w = delta.shape[2:]
    scale = eps / math.sqrt(max(h * w / (side * side), 1.0))
    delta = delta + window * torch.randn_like(delta) * scale
    norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
    return delta * (eps / norms)


# Per threat model: the starting perturbation and the move inside a square window.
_MOVES = {LinfBall: (_linf_start, _linf_move), L2Ball: (_l2_start, _l2_move), L1Ball: (l1_start, l1_move)}


class Square(Attack):
    """`queries` forward passes (× `eot_samples` on a randomized predictor) per example at most.

    L∞: starts from vertical stripes of ±ε and proposes, inside one random square window per step, a new
    ±ε value per channel. L2: starts from ±ε/√(#rows) stripes and proposes a random Gaussian square
    perturbation, the whole perturbation rescaled onto the ε-sphere (a simplification of the paper's L2
    update, which moves mass between two windows). L1 ("Mind the box"): the reference's moves between two windows
    (`square_l1`), with windows of odd side ≥ 3. A proposal is kept if it lowers the margin
    (`losses.margin`, in expectation over a randomized predictor); examples stop once misclassified.
    """

    def __init__(self, eps: float, norm: str = "linf", queries: int = 1000, p_init: float = 0.8,
                 chunk_size: int | None = 256, eot_samples: int | None = None) -> None:
        self.threat = ball(norm, eps, ("linf", "l2", "l1"))
        require(is_integer(queries) and queries >= 1, "queries", queries, "an integer ≥ 1")
        require(is_number(p_init) and 0 < p_init <= 1, "p_init", p_init, "a number in (0, 1]")
        check_eot_samples(eot_samples)
        self.eps, self.norm, self.queries, self.p_init = float(eps), norm, queries, p_init
        self.chunk_size, self.eot_samples = chunk_size, eot_samples
        self.start, self.move = _MOVES[self.threat]

    def _propose(self, x: torch.Tensor, x_adv: torch.Tensor, side: int) -> torch.Tensor:
        n, _, h, w = x.shape
        window = random_windows(n, h, w, side, x.device)
        return project_image(x, x + self.move(x_adv - x, window, side, self.eps), self.threat, self.eps)

    def attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int) -> torch.Tensor:
        _, c, h, w = x.shape
        score = lambda images, labels: per_example_loss(model, images, labels, draws, margin)  # noqa: E731
        with torch.no_grad():
            start = project_image(x, x + self.start(x, self.eps), self.threat, self.eps)
            worst = WorstSoFar(start, score(start, y))
            for iteration in range(self.queries - 1):
                active = worst.score > 0
                if not active.any():
                    break
                fraction = square_fraction(self.p_init, iteration, self.queries)
                side = max(1, min(h, w, round(math.sqrt(fraction * h * w))))
                if self.threat is L1Ball:  # the reference's L1 windows: odd, at least 3
                    side = min(h, w, max(side, 3) + (1 - max(side, 3) % 2))
                index = active.nonzero().squeeze(1)
                candidate = self._propose(x[index], worst.x[index], side)
                worst.offer(candidate, score(candidate, y[index]), index)
                self.advance((iteration + 2) / self.queries)
        return worst.x

    def __repr__(self) -> str:
        return f"Square(norm={self.norm}, eps={self.eps:g}, queries={self.queries}, eot_samples={self.eot_samples})"
