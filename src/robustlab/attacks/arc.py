"""ARC (Dbouk & Shanbhag 2022): the adaptive attack on randomized ensembles, which the expected loss overstates.

Attacking a finite mixture through its expected loss Σ α_k·CE(f_k(x), y) follows whichever member has the
steepest loss, not the one whose fall costs the mixture most; ARC instead walks the members by decreasing
weight, steps towards each member's closest (linearised) decision boundary, and keeps a step only if the
mixture's exact expected accuracy Σ α_k·1[f_k(x) = y] does not rise. Here a tie in expected accuracy is
broken by the expected margin Σ α_k·(z_y − max_{j≠y} z_j) of the members, so that steps shorter than the
distance to a boundary still make progress (Dbouk & Shanbhag accept any step that does not raise the accuracy).
"""

from __future__ import annotations

import torch
from torch import nn

from robustlab.attacks.base import Attack, WorstSoFar, lexicographically_lower, per_example
from robustlab.attacks.expectation import check_eot_samples, weighted_members
from robustlab.attacks.losses import margin
from robustlab.attacks.norms import DENSE, ball, project_image
from robustlab.errors import is_integer, is_number, require

_TINY = 1e-10


class ARC(Attack):
    """`steps` rounds; in each, every member in decreasing weight order proposes a step of size `step_size`
    (default ε/4) from the current point towards its closest decision boundary, with the step length adapted
    so as not to undo the earlier members' progress (ρ = 0.05·ε past the boundary); a proposal is kept if
    the expected accuracy does not rise (on a tie, if the expected margin does not rise), and the round's
    combined step likewise.

    Any predictor is attacked: a finite mixture (`weighted_members()`) member by member, anything else as a
    mixture of one. The expected accuracy is exact, so `eot_samples` is unused (a mixture needs no EOT).
    """

    def __init__(self, eps: float, norm: str = "linf", steps: int = 20, step_size: float | None = None,
                 random_start: bool = True, chunk_size: int | None = 256, eot_samples: int | None = None) -> None:
        self.threat = ball(norm, eps, DENSE)
        require(is_integer(steps) and steps >= 1, "steps", steps, "an integer ≥ 1")
        if step_size is None:
            step_size = eps / 4
        require(is_number(step_size) and step_size > 0 or (eps == 0 and step_size == 0), "step_size", step_size,
                "a number > 0, or null for ε/4")
        require(isinstance(random_start, bool), "random_start", random_start, "true or false")
        require(chunk_size is None or (is_integer(chunk_size) and chunk_size >= 1), "chunk_size", chunk_size,
                "an integer ≥ 1, or null for whole batches")
        check_eot_samples(eot_samples)  # accepted like every attack's, unused: the expectation over members is exact
        self.eps, self.norm, self.steps, self.step_size = float(eps), norm, steps, float(step_size)
        self.random_start, self.chunk_size, self.eot_samples = random_start, chunk_size, eot_samples

    def attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int) -> torch.Tensor:
        members = weighted_members(model) or [(1.0, model)]
        members = sorted(members, key=lambda member: -member[0])  # the heaviest first
        score = lambda point: _expected_score(members, point, y)  # noqa: E731
        project = lambda delta: project_image(x, x + delta, self.threat, self.eps) - x  # noqa: E731
        worst = WorstSoFar(x, score(x))
        delta = project(self.threat.random(x, self.eps)) if self.random_start else torch.zeros_like(x)
        best = score(x + delta)
        worst.offer(x + delta, best)
        rho = 0.05 * self.eps
        for step in range(self.steps):
            local, local_best = torch.zeros_like(x), best.clone()
            for position, (_, member) in enumerate(members):
                direction, dual_direction, distance = self._closest_boundary(member, x + delta + local)
                beta = torch.full_like(distance, self.step_size)
                if position > 0:  # long enough to cross this member's boundary without undoing the earlier steps
                    along = (dual_direction * local).flatten(1).sum(1)
                    adapted = self.step_size / (self.step_size - distance + _TINY) * (distance - along).abs() + rho
                    beta = torch.where(distance < self.step_size, adapted, beta)
                proposal = local + per_example(beta, x) * direction
                proposal = proposal * per_example(self.step_size / (self.threat.size(proposal) + _TINY), x)
                proposed = score(x + project(delta + proposal))
                keep = ~lexicographically_lower(local_best, proposed)  # not worse for the attack
                local = torch.where(per_example(keep, x), proposal, local)
                local_best = torch.where(keep[:, None], proposed, local_best)
            candidate = project(delta + local)
            proposed = score(x + candidate)
            keep = ~lexicographically_lower(best, proposed)
            delta = torch.where(per_example(keep, x), candidate, delta)
            best = torch.where(keep[:, None], proposed, best)
            worst.offer(x + delta, best)
            self.advance((step + 1) / self.steps)
        return worst.x

    def _closest_boundary(self, member: nn.Module, point: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The member's closest linearised decision boundary from `point` (its predicted class against each
        other class): a unit step towards it in the threat's norm, the same direction scaled for inner
        products, and its distance (in the threat's norm)."""
        point = point.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = member(point)
            predicted = logits.argmax(1)
            rows = torch.arange(len(point), device=point.device)
            gradients = torch.stack([torch.autograd.grad(logits[:, c].sum(), point,
                                                         retain_graph=c < logits.shape[1] - 1)[0]
                                     for c in range(logits.shape[1])], dim=1)  # N × classes × image
        logits = logits.detach()
        normal = gradients[rows, predicted][:, None] - gradients  # ∇(z_m − z_j), per class j
        gap = (logits[rows, predicted][:, None] - logits).abs()
        dual = 1 if self.norm == "linf" else 2  # distances in the threat's norm use the dual norm of the normal
        lengths = normal.flatten(2).norm(p=dual, dim=2)
        distance = gap / (lengths + _TINY)
        distance[rows, predicted] = float("inf")
        closest = distance.argmin(1)
        w = normal[rows, closest]
        length = per_example(lengths[rows, closest], w)
        direction = -w.sign() if self.norm == "linf" else -w / (length + _TINY)
        return direction, -w / (length + _TINY), distance[rows, closest]

    def __repr__(self) -> str:
        return (f"ARC(norm={self.norm}, eps={self.eps:g}, steps={self.steps}, step_size={self.step_size:g}, "
                f"random_start={self.random_start})")


@torch.no_grad()
def _expected_score(members: list[tuple[float, nn.Module]], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per example, [Σ α_k·1[f_k(x) = y], Σ α_k·margin_k]: compared lexicographically, lower is worse for the
    model (`base.WorstSoFar`)."""
    columns = torch.zeros(len(y), 2, device=y.device)
    for weight, member in members:
        logits = member(x)
        columns[:, 0] += weight * (logits.argmax(1) == y).float()
        columns[:, 1] += weight * margin(logits, y)
    return columns
