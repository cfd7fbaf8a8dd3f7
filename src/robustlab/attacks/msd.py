"""Multi steepest descent (MSD, Maini et al. ICML 2020): one attack over the union of several balls.

At every iteration, from the current perturbation, one steepest-ascent step per norm (each projected onto its
own ball ∩ [0, 1]); per image, the step whose loss is highest is kept. The perturbation therefore ends inside the
ball of the norm chosen last, so the attack's threat model is the union of its balls. As a training attack it is
MSD adversarial training (`defense=msd`); as an evaluation attack it reports against that union.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from robustlab.attacks.base import Attack, per_example
from robustlab.attacks.expectation import check_eot_samples, per_example_loss
from robustlab.attacks.gradient import loss_and_gradient
from robustlab.attacks.norms import L1Ball, ball, project_image
from robustlab.errors import InvalidValue, is_integer, is_number, require


class MSD(Attack):
    """`steps` iterations over the balls `budgets` (norm → ε, e.g. {linf: 0.1, l2: 1.5, l1: 7.5}); each norm's
    step is `step_sizes[norm]` (default 2.5·ε/steps, the PGD rule), its L1 step moving the top `l1_share` of
    features (as PGD-L1). No random start (the paper's)."""

    norm = "union"

    def __init__(self, budgets: Mapping[str, float], steps: int = 10, step_sizes: Mapping[str, float] | None = None,
                 l1_share: float = 0.01, chunk_size: int | None = 256, eot_samples: int | None = None) -> None:
        require(isinstance(budgets, Mapping) and len(budgets) >= 1 and all(is_number(v) for v in budgets.values()),
                "budgets", budgets, "a mapping norm → ε, e.g. {linf: 0.1, l1: 7.5}")
        self.threats = {}
        for norm, eps in budgets.items():  # each budget named by its own key
            try:
                self.threats[str(norm)] = ball(str(norm), float(eps), ("linf", "l2", "l1"))
            except InvalidValue as error:
                raise InvalidValue(f"budgets.{norm}", eps, error.allowed) from None
        require(is_integer(steps) and steps >= 1, "steps", steps, "an integer ≥ 1")
        require(is_number(l1_share) and 0 < l1_share <= 1, "l1_share", l1_share, "a number in (0, 1]")
        check_eot_samples(eot_samples)
        sizes = dict(step_sizes or {})
        require(set(sizes) <= set(self.threats) and all(is_number(v) and v > 0 for v in sizes.values()),
                "step_sizes", step_sizes, f"a mapping from some of {sorted(self.threats)} to numbers > 0")
        self.budgets = {str(norm): float(eps) for norm, eps in budgets.items()}
        self.step_sizes = {norm: float(sizes.get(norm, 2.5 * self.budgets[norm] / steps)) for norm in self.threats}
        self.eps = max(self.budgets.values())  # nonzero while any ball is (`does_nothing`)
        self.steps, self.l1_share, self.chunk_size, self.eot_samples = steps, float(l1_share), chunk_size, eot_samples

    def balls(self) -> list[tuple[str, float]]:
        return [(norm, eps) for norm, eps in self.budgets.items()]

    def _direction(self, norm: str, x_adv: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        if norm == "l1":
            return L1Ball.movable_ascent(x_adv, grad, self.l1_share)
        return self.threats[norm].ascent_direction(grad)

    def attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int) -> torch.Tensor:
        x_adv = x.clone()
        for step in range(self.steps):
            grad = loss_and_gradient(model, x_adv, y, draws)[1]
            best, best_loss = x_adv, None
            for norm, threat in self.threats.items():
                candidate = project_image(x, x_adv + self.step_sizes[norm] * self._direction(norm, x_adv, grad),
                                          threat, self.budgets[norm])
                if len(self.threats) == 1:
                    best = candidate
                    break
                with torch.no_grad():
                    loss = per_example_loss(model, candidate, y, draws)
                if best_loss is None:
                    best, best_loss = candidate, loss
                    continue
                higher = loss > best_loss
                best = torch.where(per_example(higher, x), candidate, best)
                best_loss = torch.where(higher, loss, best_loss)
            x_adv = best
            self.advance((step + 1) / self.steps)
        return x_adv.detach()

    def __repr__(self) -> str:
        return (f"MSD(eps={self.budgets}, steps={self.steps}, step_sizes={self.step_sizes}, "
                f"eot_samples={self.eot_samples})")
