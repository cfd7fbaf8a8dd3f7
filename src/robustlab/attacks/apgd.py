"""Auto-PGD (Croce & Hein 2020): PGD with momentum and a step size halved at checkpoints when progress stalls.

Losses: cross-entropy (APGD-CE) or the difference of logits ratio (APGD-DLR), which is invariant to shifting
and rescaling the logits and so does not vanish on saturated softmax outputs. Targeted (APGD-T, `targets`):
one run per target class, the most likely other classes first, each towards its target (targeted DLR).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from robustlab.attacks.apgd_l1 import l1_schedule
from robustlab.attacks.base import Attack, WorstSoFar, per_example
from robustlab.attacks.expectation import check_eot_samples, expected_correct
from robustlab.attacks.gradient import loss_and_gradient
from robustlab.attacks.losses import TARGETED_LOSSES, loss_function
from robustlab.attacks.norms import ball, image_projector
from robustlab.attacks.targeting import most_likely_wrong_classes, nearest_boundaries
from robustlab.errors import is_integer, is_number, require


def checkpoints(steps: int) -> list[int]:
    """The iterations where the step size may be halved: p₀ = 0, p₁ = 0.22,
    p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06)."""
    fractions = [0.0, 0.22]
    while fractions[-1] < 1:
        fractions.append(fractions[-1] + max(fractions[-1] - fractions[-2] - 0.03, 0.06))
    return sorted({math.ceil(fraction * steps) for fraction in fractions[1:] if fraction <= 1})


RANKINGS = ("logits", "boundary")  # how APGD-T orders its targets (`targeting`)


class APGD(Attack):
    """`steps` iterations from a random start (per restart); each example keeps its worst point found.

    Per example: the step starts at 2ε; at each checkpoint it is halved (and the iterate reset to the best
    point) if fewer than ρ = 75% of the steps since the last checkpoint raised the loss, or if neither the
    step size nor the best loss changed since then. Momentum α = 0.75. `eot_samples` as in `PGD`; `loss` a
    name of `losses.LOSSES` ("ce": APGD-CE, "dlr": APGD-DLR) or a per-example loss function.

    `targets` (APGD-T): run towards `targets` wrong classes of the clean image in turn (at most classes − 1),
    with the targeted form of `loss` (`losses.TARGETED_LOSSES`); `restarts` runs per target. Every run after the
    first attacks only the points still classified right. `ranking` orders the targets (`targeting`): "logits",
    the most likely first (AutoAttack's APGD-T), or "boundary", the nearest linearized boundary first (MALT).

    Under L1, the reference's L1 schedule ("Mind the box", `apgd_l1.py`); `large_reps`: its budgets 3ε, 2ε, ε
    over 30%, 30% and 40% of the steps (AutoAttack-L1's `use_largereps`).
    """

    def __init__(self, eps: float, norm: str = "linf", loss: str | Callable = "ce", steps: int = 100,
                 restarts: int = 1, rho: float = 0.75, momentum: float = 0.75, chunk_size: int | None = 256,
                 eot_samples: int | None = None, targets: int | None = None, ranking: str = "logits",
                 large_reps: bool = False) -> None:
        self.threat = ball(norm, eps, ("linf", "l2", "l1"))
        require(ranking in RANKINGS, "ranking", ranking, f"one of {', '.join(RANKINGS)}")
        self.loss_fn = loss_function(loss)
        require(targets is None or (is_integer(targets) and targets >= 1), "targets", targets,
                "an integer ≥ 1 (APGD-T: the most likely wrong classes, in turn), or null for untargeted")
        self.targeted_loss = None
        if targets is not None:
            require(isinstance(loss, str) and loss in TARGETED_LOSSES, "loss", loss,
                    f"one of {sorted(TARGETED_LOSSES)} for a targeted attack")
            self.targeted_loss = TARGETED_LOSSES[str(loss)]
        self.targets, self.ranking = targets, ranking
        require(is_integer(steps) and steps >= 1, "steps", steps, "an integer ≥ 1")
        require(is_integer(restarts) and restarts >= 1, "restarts", restarts, "an integer ≥ 1")
        require(is_number(rho) and 0 < rho <= 1, "rho", rho, "a number in (0, 1]")
        require(is_number(momentum) and 0 <= momentum <= 1, "momentum", momentum, "a number in [0, 1]")
        check_eot_samples(eot_samples)
        require(isinstance(large_reps, bool) and (not large_reps or norm == "l1"), "large_reps", large_reps,
                "true or false (true only under norm l1)")
        self.large_reps = large_reps
        self.eps, self.norm, self.loss, self.steps, self.restarts = float(eps), norm, loss, steps, restarts
        self.rho, self.momentum, self.chunk_size, self.eot_samples = rho, momentum, chunk_size, eot_samples

    def attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int) -> torch.Tensor:
        worst = WorstSoFar(x, expected_correct(model, x, y, draws))
        runs = [(target, restart) for target in self._target_classes(model, x, y, draws)
                for restart in range(self.restarts)]
        for index, (target, _restart) in enumerate(runs):
            standing = (worst.score > 0).nonzero().squeeze(1)
            if len(standing) == 0:
                break
            candidate = self._run(model, x[standing], y[standing], draws, (index, len(runs)),
                                  None if target is None else target[standing])
            worst.offer(candidate, expected_correct(model, candidate, y[standing], draws), standing)
        return worst.x

    def _target_classes(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int) -> list:
        """[None] untargeted; else per rank r, each image's r-th target class by `ranking`."""
        if self.targets is None:
            return [None]
        if self.ranking == "boundary":
            return nearest_boundaries(model, x, y, draws, self.targets, self.norm)
        return most_likely_wrong_classes(model, x, y, draws, self.targets)

    def objective(self, y: torch.Tensor, target: torch.Tensor | None) -> tuple[Callable, Callable]:
        """The run's loss (towards `target` with the targeted loss, if given), which records every forward
        pass's answer for free, and a function saying per image whether the passes since its last call were all
        fooled."""
        predictions: list[torch.Tensor] = []
        targeted = self.targeted_loss
        objective = self.loss_fn if target is None or targeted is None else \
            (lambda logits, labels: targeted(logits, labels, target))

        def loss_fn(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            predictions.append(logits.detach().argmax(1) == labels)
            return objective(logits, labels)

        def fooled_by_all_draws() -> torch.Tensor:  # the passes' answers, draw after draw (batched or not)
            fooled = ~torch.cat(predictions).view(-1, len(y)).any(dim=0)
            predictions.clear()
            return fooled

        return loss_fn, fooled_by_all_draws

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int, run: tuple[int, int],
             target: torch.Tensor | None = None) -> torch.Tensor:
        if self.norm == "l1":
            return l1_schedule(self, model, x, y, draws, run, target)
        loss_fn, fooled_by_all_draws = self.objective(y, target)
        project = image_projector(x, self.threat, self.eps)
        x_k = project(x + self.threat.random(x, self.eps))
        loss, grad = loss_and_gradient(model, x_k, y, draws, loss_fn)
        found = fooled_by_all_draws()
        adversarial = x_k.clone()  # a misclassified point, where one was found
        step = torch.full((len(x),), 2.0 * self.eps, device=x.device)
        best_x, best_loss, best_grad = x_k.clone(), loss.clone(), grad.clone()
        x_prev = x_k
        increases = torch.zeros(len(x), device=x.device)
        best_loss_at_checkpoint, step_reduced = best_loss.clone(), torch.ones(len(x), dtype=torch.bool, device=x.device)
        marks, last_mark = set(checkpoints(self.steps)), 0
        for k in range(self.steps):
            z = project(x_k + per_example(step, x) * self.threat.ascent_direction(grad))
            alpha = 1.0 if k == 0 else self.momentum
            x_next = project(x_k + alpha * (z - x_k) + (1 - alpha) * (x_k - x_prev))
            new_loss, new_grad = loss_and_gradient(model, x_next, y, draws, loss_fn)
            fooled = fooled_by_all_draws() & ~found
            adversarial = torch.where(per_example(fooled, x), x_next, adversarial)
            found |= fooled
            increases += (new_loss > loss).float()
            improved = new_loss > best_loss
            best_x = torch.where(per_example(improved, x), x_next, best_x)
            best_loss = torch.where(improved, new_loss, best_loss)
            best_grad = torch.where(per_example(improved, x), new_grad, best_grad)
            x_prev, x_k, loss, grad = x_k, x_next, new_loss, new_grad
            self.advance((run[0] + (k + 1) / self.steps) / run[1])
            if k + 1 in marks:
                too_few = increases < self.rho * (k + 1 - last_mark)
                stalled = ~step_reduced & (best_loss <= best_loss_at_checkpoint)
                reduce = too_few | stalled
                step = torch.where(reduce, step / 2, step)
                # Restart from the best point, with the loss and gradient kept from when it was found (as the
                # reference does): no pass to recompute them.
                x_k = torch.where(per_example(reduce, x), best_x, x_k)
                loss = torch.where(reduce, best_loss, loss)
                grad = torch.where(per_example(reduce, x), best_grad, grad)
                x_prev = torch.where(per_example(reduce, x), x_k, x_prev)
                step_reduced, best_loss_at_checkpoint = reduce, best_loss.clone()
                increases.zero_()
                last_mark = k + 1
        # A point misclassified on every draw where one was found, else the highest-loss point.
        return torch.where(per_example(found, x), adversarial, best_x)

    def __repr__(self) -> str:
        return (f"APGD(loss={self.loss}, norm={self.norm}, eps={self.eps:g}, steps={self.steps}, "
                f"restarts={self.restarts}, eot_samples={self.eot_samples}"
                + ("" if self.targets is None else f", targets={self.targets}, ranking={self.ranking}")
                + (", large_reps=True" if self.large_reps else "") + ")")
