"""FAB-T (Croce & Hein 2020): the targeted fast adaptive boundary attack, a minimum-norm attack under L∞, L2 or L1.

Each iteration linearises the logit difference between the label and the target class and projects both the
current point and the original image onto that hyperplane (inside [0, 1]); the next point is a convex
combination of the two projections, biased towards the one near the original (α ≤ α_max), overshooting by η.
Once a point is adversarial it is kept if it is the closest so far, and the iterate moves back towards the
original by β. The attack succeeds on an image if its closest adversarial point lies within ε.
"""

from __future__ import annotations

import torch
from torch import nn

from robustlab.attacks.base import Attack, WorstSoFar, per_example
from robustlab.attacks.expectation import check_eot_samples, expected_correct
from robustlab.attacks.gradient import loss_and_gradient
from robustlab.attacks.norms import ball
from robustlab.attacks.targeting import most_likely_wrong_classes
from robustlab.errors import is_integer, is_number, require


def _smallest_reaching(weights: torch.Tensor, breaks: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per row, the smallest r ≥ 0 with h(r) = Σᵢ weightsᵢ·min(r, breaksᵢ) ≥ target (weights, breaks ≥ 0), or
    the largest break where h never gets there. h is piecewise linear and non-decreasing, its kinks at the
    breaks: sorted, h at each break is a cumulative sum, and r lies on the first segment that reaches the target
    (one sort per row, exact)."""
    breaks, order = breaks.sort(dim=1)
    weights = weights.gather(1, order)
    below = (weights * breaks).cumsum(1)  # Σ_{j ≤ k} weights_j·breaks_j
    slope = weights.sum(1, keepdim=True) - weights.cumsum(1) + weights  # Σ_{j ≥ k} weights_j: h's slope before break k
    at_breaks = below + breaks * (slope - weights)  # h(breaks_k)
    segment = (at_breaks < target).sum(1, keepdim=True)  # the first break where h reaches the target
    zero = torch.zeros_like(target)
    start = torch.cat([zero, below], 1).gather(1, segment)  # h's value from the breaks passed, Σ_{j < k}
    rate = torch.cat([slope, zero], 1).gather(1, segment)
    last = breaks[:, -1:]
    return torch.where(rate > 0, ((target - start) / rate.clamp_min(1e-300)).clamp(min=0), last).minimum(last)


def _l1_amounts(magnitude: torch.Tensor, room: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per row, how far each coordinate moves under L1: the steepest first (largest |wᵢ|, the most gain per unit of
    L1), each to its face of the box, until the gain Σ |wᵢ|·moveᵢ reaches `target` (the last one partly)."""
    magnitude, order = magnitude.sort(dim=1, descending=True)
    room = room.gather(1, order)
    reached = (magnitude * room).cumsum(1)
    before = reached - magnitude * room
    partial = ((target - before) / magnitude.clamp_min(1e-300)).clamp(min=0)
    moved = torch.where(reached <= target, room, torch.where(before < target, partial.minimum(room), 0.0))
    return torch.zeros_like(moved).scatter(1, order, moved)


def project_onto_hyperplane(point: torch.Tensor, w: torch.Tensor, c: torch.Tensor, norm: str) -> torch.Tensor:
    """Per example, the point z of [0, 1]^d with w·z = c closest to `point` in `norm` (the closest point of the
    box to the hyperplane where they do not meet). z moves along one path as a scalar grows: z = clip(p + t·s·w)
    under L2 (t the multiplier), z = clip(p + r·s·sign(w)) under L∞ (r the radius), s the side w·z must move to.
    Each coordinate moves until it meets its face of the box, so w·z − w·p = s·Σᵢ aᵢ·min(t, bᵢ) with aᵢ = wᵢ²,
    bᵢ = (room to the face)/|wᵢ| under L2 and aᵢ = |wᵢ|, bᵢ = room under L∞: the scalar that reaches c is found
    exactly (`_smallest_reaching`). Under L1 the coordinates move one after another instead (`_l1_amounts`)."""
    shape = point.shape
    p, w = point.flatten(1).double(), w.flatten(1).double()
    c = c.double()
    side = torch.sign(c - (w * p).sum(1))[:, None]  # which way w·z must move
    direction = side * torch.sign(w)  # each coordinate's way: up (+1), down (−1) or not at all (0)
    room = torch.where(direction > 0, 1 - p, p).clamp(min=0)  # how far it can go before its face
    target = (side * (c[:, None] - (w * p).sum(1, keepdim=True))).clamp(min=0)
    if norm == "l2":
        magnitude = w.abs()
        weights = w * w
        breaks = torch.where(magnitude > 0, room / magnitude.clamp_min(1e-300), torch.zeros_like(room))
        t = _smallest_reaching(weights, breaks, target)
        z = (p + side * t * w).clamp(0, 1)
    elif norm == "l1":
        z = p + side * torch.sign(w) * _l1_amounts(w.abs(), room, target)
    else:
        weights = w.abs()
        r = _smallest_reaching(weights, torch.where(weights > 0, room, torch.zeros_like(room)), target)
        z = (p + side * r * torch.sign(w)).clamp(0, 1)
    return z.view(shape).to(point.dtype)


class FAB(Attack):
    """FAB-T: towards each of the `targets` most likely wrong classes in turn (AutoAttack's 9), `steps`
    iterations each (`restarts` per target, the first from the image itself, later ones from a random point
    at half the best distance found so far). α_max = 0.1, η = 1.05, β = 0.9 as in the paper.
    """

    def __init__(self, eps: float, norm: str = "linf", steps: int = 100, targets: int = 9, restarts: int = 1,
                 alpha_max: float = 0.1, eta: float = 1.05, beta: float = 0.9, chunk_size: int | None = 256,
                 eot_samples: int | None = None) -> None:
        self.threat = ball(norm, eps, ("linf", "l2", "l1"))
        require(is_integer(steps) and steps >= 1, "steps", steps, "an integer ≥ 1")
        require(is_integer(targets) and targets >= 1, "targets", targets, "an integer ≥ 1")
        require(is_integer(restarts) and restarts >= 1, "restarts", restarts, "an integer ≥ 1")
        require(is_number(alpha_max) and 0 <= alpha_max <= 1, "alpha_max", alpha_max, "a number in [0, 1]")
        require(is_number(eta) and eta >= 1, "eta", eta, "a number ≥ 1")
        require(is_number(beta) and 0 < beta <= 1, "beta", beta, "a number in (0, 1]")
        require(chunk_size is None or (is_integer(chunk_size) and chunk_size >= 1), "chunk_size", chunk_size,
                "an integer ≥ 1, or null for whole batches")
        check_eot_samples(eot_samples)
        self.eps, self.norm, self.steps, self.targets, self.restarts = float(eps), norm, steps, targets, restarts
        self.alpha_max, self.eta, self.beta = float(alpha_max), float(eta), float(beta)
        self.chunk_size, self.eot_samples = chunk_size, eot_samples

    def attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int) -> torch.Tensor:
        worst = WorstSoFar(x, expected_correct(model, x, y, draws))
        targets = most_likely_wrong_classes(model, x, y, draws, self.targets)
        runs = [(target, restart) for target in targets for restart in range(self.restarts)]
        closest = torch.full((len(x),), float("inf"), device=x.device)
        for index, (target, restart) in enumerate(runs):
            standing = (worst.score > 0).nonzero().squeeze(1)
            if len(standing) == 0:
                break
            found, distance = self._run(model, x[standing], y[standing], target[standing], draws,
                                        closest[standing], restart, (index, len(runs)))
            closest[standing] = torch.minimum(closest[standing], distance)
            within = distance <= self.eps * (1 + 1e-6)
            if within.any():
                chosen = standing[within]
                inside = x[chosen] + self.threat.project(found[within] - x[chosen], self.eps)
                worst.offer(inside.clamp(0, 1), expected_correct(model, inside.clamp(0, 1), y[chosen], draws), chosen)
        return worst.x

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor, draws: int,
             closest: torch.Tensor, restart: int, run: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """One FAB-T run: the closest adversarial point found per image and its distance (inf: none)."""
        def difference(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:  # < 0 once t beats y
            return logits.gather(1, labels[:, None])[:, 0] - logits.gather(1, target[:, None])[:, 0]

        x_k = x.clone()
        if restart > 0:  # a random point at half the best distance so far (ε where none was found)
            radius = torch.where(torch.isfinite(closest), closest,
                                 torch.full_like(closest, self.eps)).clamp(max=self.eps)
            step = self.threat.random(x, 1.0)
            step = step / (self.threat.size(step) + 1e-12).view(-1, *([1] * (x.dim() - 1)))
            x_k = (x + per_example(radius / 2, x) * step).clamp(0, 1)
        best, distance = x.clone(), torch.full((len(x),), float("inf"), device=x.device)
        for k in range(self.steps):
            value, gradient = loss_and_gradient(model, x_k, y, draws, difference)
            # The hyperplane where the linearised difference is 0: w·z = c.
            w = gradient
            c = (w * x_k).flatten(1).sum(1) - value
            to_current = project_onto_hyperplane(x_k, w, c, self.norm) - x_k
            to_original = project_onto_hyperplane(x, w, c, self.norm) - x
            a, b = self.threat.size(to_current), self.threat.size(to_original)
            alpha = (a / (a + b + 1e-12)).clamp(0, self.alpha_max)
            x_k = ((1 - per_example(alpha, x)) * (x_k + self.eta * to_current)
                   + per_example(alpha, x) * (x + self.eta * to_original)).clamp(0, 1)
            adversarial = expected_correct(model, x_k, y, draws) < 0.5
            size = self.threat.size(x_k - x)
            closer = adversarial & (size < distance)
            best = torch.where(per_example(closer, x), x_k, best)
            distance = torch.where(closer, size, distance)
            x_k = torch.where(per_example(adversarial, x), (1 - self.beta) * x + self.beta * x_k, x_k)
            self.advance((run[0] + (k + 1) / self.steps) / run[1])
        return best, distance

    def __repr__(self) -> str:
        return (f"FAB(norm={self.norm}, eps={self.eps:g}, steps={self.steps}, targets={self.targets}, "
                f"restarts={self.restarts})")
