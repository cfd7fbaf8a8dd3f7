"""Sparse-RS (Croce et al. AAAI 2022): score-based black-box random search under L0, as its reference runs it
(`rs_attacks.py`, norm L0, untargeted, margin loss).

The perturbation changes exactly k = ε pixels, each set to a corner of the colour cube ({0, 1} per channel).
Each query swaps a few changed pixels back to the image and changes as many unchanged ones (new random corners);
the proposal is kept if it lowers the margin or misclassifies. How many pixels a query swaps, α·k, shrinks on the
reference's schedule: α = α_init / 2, 4, 5, 6, 8, 10, 12, 15, 20 past 0, 50, 200, 500, 1000, 2000, 4000, 6000, 8000
of 10,000 queries (rescaled to the budget). Like Square, it only reads the predictor's outputs, so gradient
masking does not stop it.
"""

from __future__ import annotations

import torch
from torch import nn

from robustlab.attacks.base import Attack, WorstSoFar
from robustlab.attacks.expectation import check_eot_samples, per_example_loss
from robustlab.attacks.losses import margin
from robustlab.attacks.norms import ball
from robustlab.errors import is_integer, is_number, require

_MARKS = (0, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)  # of 10,000 queries
_DIVISORS = (2, 4, 5, 6, 8, 10, 12, 15, 20)


def swap_share(alpha_init: float, iteration: int, queries: int) -> float:
    """The share of the k changed pixels a query swaps at `iteration` (the reference's `p_selection`, L0)."""
    scaled = int(iteration / queries * 10_000)
    passed = sum(scaled > mark for mark in _MARKS)
    return alpha_init if passed == 0 or scaled > 10_000 else alpha_init / _DIVISORS[passed - 1]


def _corners(n: int, channels: int, count: int, like: torch.Tensor) -> torch.Tensor:
    """Random corners of the colour cube: n × channels × count values in {0, 1}."""
    return torch.randint(0, 2, (n, channels, count), device=like.device).to(like.dtype)


class SparseRS(Attack):
    """Sparse-RS under L0: `queries` forward passes (× `eot_samples` on a randomized predictor) per image at most,
    ε pixels changed; `alpha_init` the reference's initial share of pixels swapped per query (0.3)."""

    def __init__(self, eps: float, norm: str = "l0", queries: int = 10_000, alpha_init: float = 0.3,
                 chunk_size: int | None = 256, eot_samples: int | None = None) -> None:
        self.threat = ball(norm, eps, ("l0",))
        require(is_integer(queries) and queries >= 1, "queries", queries, "an integer ≥ 1")
        require(is_number(alpha_init) and 0 < alpha_init <= 1, "alpha_init", alpha_init, "a number in (0, 1]")
        check_eot_samples(eot_samples)
        self.eps, self.norm, self.queries, self.alpha_init = float(eps), norm, queries, float(alpha_init)
        self.chunk_size, self.eot_samples = chunk_size, eot_samples

    def attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int) -> torch.Tensor:
        n, channels = x.shape[:2]
        flat = x.reshape(n, channels, -1)
        pixels, k = flat.shape[2], min(int(self.eps), flat.shape[2])
        if k == 0:
            return x.clone()
        order = torch.rand(n, pixels, device=x.device).argsort(dim=1)
        changed, unchanged = order[:, :k].contiguous(), order[:, k:].contiguous()
        start = flat.clone()
        start.scatter_(2, changed[:, None].expand(-1, channels, -1), _corners(n, channels, k, x))
        score = lambda images, labels: per_example_loss(  # noqa: E731
            model, images.view(-1, *x.shape[1:]), labels, draws, margin)
        with torch.no_grad():
            worst = WorstSoFar(start, score(start, y))
            for iteration in range(1, self.queries):
                active = (worst.score > 0).nonzero().squeeze(1)
                if len(active) == 0 or len(unchanged[0]) == 0:
                    break
                count = max(int(swap_share(self.alpha_init, iteration, self.queries) * k), 1)
                count = min(count, pixels - k)
                # The same positions (in each image's lists) for every image, as the reference.
                back = torch.randperm(k, device=x.device)[:count]
                new = torch.randperm(pixels - k, device=x.device)[:count]
                restored, moved = changed[active][:, back], unchanged[active][:, new]
                candidate = worst.x[active].clone()
                restored_index = restored[:, None].expand(-1, channels, -1)
                candidate.scatter_(2, restored_index, flat[active].gather(2, restored_index))
                moved_index = moved[:, None].expand(-1, channels, -1)
                colours = _corners(len(active), channels, count, x)
                if count == 1:  # a single pixel gets a colour other than its current one
                    current = candidate.gather(2, moved_index)
                    colours = torch.where((colours == current).all(dim=1, keepdim=True), 1 - colours, colours)
                candidate.scatter_(2, moved_index, colours)
                values = score(candidate, y[active])
                better = (values < worst.score[active]) | (values < -1e-6)
                kept = active[better]
                worst.x[kept], worst.score[kept] = candidate[better], values[better]
                changed[kept[:, None], back[None, :]] = moved[better]
                unchanged[kept[:, None], new[None, :]] = restored[better]
                self.advance((iteration + 1) / self.queries)
        return worst.x.view_as(x)

    def __repr__(self) -> str:
        return (f"SparseRS(norm={self.norm}, eps={self.eps:g}, queries={self.queries}, alpha_init={self.alpha_init:g}, "
                f"eot_samples={self.eot_samples})")
