"""Square Attack (Andriushchenko et al. 2020): score-based black-box random search with square-shaped updates.

It never looks at gradients, only at the predictor's outputs, so gradient masking does not stop it: on an
honest model it should do no better than the white-box attacks (the gradient-masking audit checks this).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from robustlab.attacks.batching import in_chunks
from robustlab.attacks.expectation import check_eot_samples, eot_draws, weighted_members
from robustlab.attacks.norms import ball, project_image
from robustlab.errors import is_integer, is_number, require

# Fraction of the image a square covers, halved at these shares of a 10,000-query budget (the paper's schedule).
_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def square_fraction(p_init: float, iteration: int, queries: int) -> float:
    scaled = int(iteration / queries * 10_000)
    return p_init / 2 ** sum(scaled > mark for mark in _HALVINGS)


@torch.no_grad()
def margin(model: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int) -> torch.Tensor:
    """z_y − max_{i≠y} z_i per example (< 0: misclassified), in expectation over the predictor's randomness."""
    def one(logits: torch.Tensor) -> torch.Tensor:
        true = logits.gather(1, y[:, None]).squeeze(1)
        others = logits.scatter(1, y[:, None], float("-inf"))
        return true - others.max(dim=1).values

    members = weighted_members(model)
    if members is not None:
        return sum(weight * one(member(x)) for weight, member in members)
    return sum(one(model(x)) for _ in range(draws)) / draws


class Square:
    """`queries` forward passes (× `eot_samples` on a randomized predictor) per example at most.

    L∞: starts from vertical stripes of ±ε and proposes, inside one random square window per step, a new
    ±ε value per channel. L2: starts from ±ε/√(#rows) stripes and proposes a random Gaussian square
    perturbation, the whole perturbation rescaled onto the ε-sphere (a simplification of the paper's L2
    update, which moves mass between two windows). A proposal is kept if it lowers the margin; examples
    stop once misclassified.
    """

    def __init__(self, eps: float, norm: str = "linf", queries: int = 1000, p_init: float = 0.8,
                 chunk_size: int | None = 256, eot_samples: int | None = None) -> None:
        self.threat = ball(norm, eps)
        require(is_integer(queries) and queries >= 1, "queries", queries, "an integer ≥ 1")
        require(is_number(p_init) and 0 < p_init <= 1, "p_init", p_init, "a number in (0, 1]")
        check_eot_samples(eot_samples)
        self.eps, self.norm, self.queries, self.p_init = float(eps), norm, queries, p_init
        self.chunk_size, self.eot_samples = chunk_size, eot_samples

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = x.detach()
        if self.eps == 0:
            return x.clone()
        draws = eot_draws(self.eot_samples, model, x)
        return in_chunks(lambda *batch: self._attack(*batch, draws), model, x, y, self.chunk_size)

    def _init(self, x: torch.Tensor) -> torch.Tensor:
        n, c, _, w = x.shape
        signs = torch.randint(0, 2, (n, c, 1, w), device=x.device, dtype=x.dtype) * 2 - 1
        if self.norm == "linf":
            return project_image(x, x + self.eps * signs, self.threat, self.eps)
        return project_image(x, x + self.threat.project(signs.expand_as(x) * self.eps, self.eps), self.threat, self.eps)

    def _propose(self, x: torch.Tensor, x_adv: torch.Tensor, side: int) -> torch.Tensor:
        n, c, h, w = x.shape
        top = torch.randint(0, h - side + 1, (n,), device=x.device)
        left = torch.randint(0, w - side + 1, (n,), device=x.device)
        rows = torch.arange(h, device=x.device).view(1, h, 1)
        cols = torch.arange(w, device=x.device).view(1, 1, w)
        window = ((rows >= top.view(-1, 1, 1)) & (rows < (top + side).view(-1, 1, 1))
                  & (cols >= left.view(-1, 1, 1)) & (cols < (left + side).view(-1, 1, 1))).unsqueeze(1)
        delta = x_adv - x
        if self.norm == "linf":
            values = (torch.randint(0, 2, (n, c, 1, 1), device=x.device, dtype=x.dtype) * 2 - 1) * self.eps
            delta = torch.where(window, values.expand_as(delta), delta)
        else:
            scale = self.eps / math.sqrt(max(h * w / (side * side), 1.0))
            delta = delta + window * torch.randn_like(delta) * scale
            norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
            delta = delta * (self.eps / norms)
        return project_image(x, x + delta, self.threat, self.eps)

    def _attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int) -> torch.Tensor:
        _, c, h, w = x.shape
        x_adv = self._init(x)
        best = margin(model, x_adv, y, draws)
        for iteration in range(self.queries - 1):
            active = best > 0
            if not active.any():
                break
            fraction = square_fraction(self.p_init, iteration, self.queries)
            side = max(1, min(h, w, round(math.sqrt(fraction * h * w))))
            index = active.nonzero().squeeze(1)
            candidate = self._propose(x[index], x_adv[index], side)
            value = margin(model, candidate, y[index], draws)
            better = value < best[index]
            x_adv[index[better]] = candidate[better]
            best[index[better]] = value[better]
        return x_adv

    def __repr__(self) -> str:
        return f"Square(norm={self.norm}, eps={self.eps:g}, queries={self.queries}, eot_samples={self.eot_samples})"
