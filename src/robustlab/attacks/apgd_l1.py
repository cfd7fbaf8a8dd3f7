"""APGD's L1 schedule ("Mind the box", Croce & Hein 2021), as its reference code runs it (`autopgd_base.py`).

Under L1 the step is sparse and its sparsity adapts: each step moves the top `k` features of the gradient (their
signs, spread to unit L1 norm), starting from k = 20% of the features; every 4% of the steps, k becomes the
sparsity of the best point so far ÷ 1.5, and the step size (from ε) is reset to ε where that sparsity fell by 5%
or more (and the iterate restarts from the best point), else divided by 1.5 (never under ε/10). No momentum.
With `large_reps` the run spends 30%, 30% and 40% of its steps at budgets 3ε, 2ε and ε, each stage starting from
the previous one's best point projected onto its ball; only the last stage's points count.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from robustlab.attacks.base import per_example
from robustlab.attacks.gradient import loss_and_gradient
from robustlab.attacks.norms import L1Ball

if TYPE_CHECKING:
    from robustlab.attacks.apgd import APGD

SPARSITY_START = 0.2  # the share of features the first steps move
CHECK_EVERY = 0.04  # the share of the steps between checks
SPARSITY_DROP = 0.95  # a check where the best point's sparsity fell below this share of the last one's resets
STEP_DIVISOR, MIN_STEP_SHARE = 1.5, 10.0  # else the step is divided by 1.5, down to ε/10


def l1_schedule(attack: APGD, model: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int,
                run: tuple[int, int], target: torch.Tensor | None = None) -> torch.Tensor:
    """One APGD run under L1 (with `large_reps`, its three budgets): a point misclassified on every draw where
    one was found at the final budget, else the highest-loss point."""
    if not attack.large_reps:
        stages = [(attack.eps, attack.steps)]
    else:
        first = math.ceil(0.3 * attack.steps)
        stages = [(3 * attack.eps, first), (2 * attack.eps, first), (attack.eps, attack.steps - 2 * first)]
        stages = [(eps, steps) for eps, steps in stages if steps > 0]
    point = x + torch.randn_like(x)  # the reference's start: a Gaussian point, projected onto the first ball
    done = 0
    for eps, steps in stages:
        point, found, adversarial = _l1_run(attack, model, x, y, draws, L1Ball.project_in_box(x, point - x, eps),
                                            eps, steps, target, (run, done, attack.steps))
        done += steps
    return torch.where(per_example(found, x), adversarial, point)


def _sparse_step(grad: torch.Tensor, share: torch.Tensor) -> torch.Tensor:
    """Per image, the signs of its gradient's top `share` features (ties included), spread to unit L1 norm."""
    flat = grad.flatten(1).abs()
    features = flat.shape[1]
    ranked = flat.sort(dim=1).values
    position = ((1.0 - share) * features).clamp(0, features - 1).long()
    threshold = ranked.gather(1, position[:, None])
    signs = (grad.flatten(1) * (flat >= threshold)).sign()
    return (signs / (signs.abs().sum(1, keepdim=True) + 1e-10)).view(grad.shape)


def _l1_run(attack: APGD, model: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int, x_k: torch.Tensor,
            eps: float, steps: int, target: torch.Tensor | None, progress: tuple[tuple[int, int], int, int]
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`steps` iterations at budget `eps` from `x_k`: the highest-loss point, whether a misclassified point was
    found (on every draw), and that point."""
    loss_fn, fooled_by_all_draws = attack.objective(y, target)
    features = x[0].numel()
    loss, grad = loss_and_gradient(model, x_k, y, draws, loss_fn)
    found, adversarial = fooled_by_all_draws(), x_k.clone()
    best_x, best_loss, best_grad = x_k.clone(), loss.clone(), grad.clone()
    step = torch.full((len(x),), float(eps), device=x.device, dtype=x.dtype)
    if attack.large_reps:  # a stage that starts from a given point starts from its sparsity, as the reference
        sparsity_before = (x_k != x).flatten(1).sum(1).float()
        share = sparsity_before / features / STEP_DIVISOR
    else:
        share = torch.full((len(x),), SPARSITY_START, device=x.device)
        sparsity_before = torch.full((len(x),), float(features), device=x.device)
    every = max(int(CHECK_EVERY * steps), 1)
    (run, total), done, all_steps = progress
    for k in range(steps):
        x_k = L1Ball.project_in_box(x, x_k + per_example(step, x) * _sparse_step(grad, share) - x, eps)
        loss, grad = loss_and_gradient(model, x_k, y, draws, loss_fn)
        fooled = fooled_by_all_draws() & ~found
        adversarial = torch.where(per_example(fooled, x), x_k, adversarial)
        found |= fooled
        improved = loss > best_loss
        best_x = torch.where(per_example(improved, x), x_k, best_x)
        best_loss = torch.where(improved, loss, best_loss)
        best_grad = torch.where(per_example(improved, x), grad, best_grad)
        attack.advance((run + (done + k + 1) / all_steps) / total)
        if (k + 1) % every == 0:
            sparsity = (best_x != x).flatten(1).sum(1).float()
            reset = sparsity / sparsity_before < SPARSITY_DROP
            share = sparsity / features / STEP_DIVISOR
            step = torch.where(reset, torch.full_like(step, eps), step / STEP_DIVISOR)
            step = step.clamp(eps / MIN_STEP_SHARE, eps)
            sparsity_before = sparsity
            x_k = torch.where(per_example(reset, x), best_x, x_k)
            grad = torch.where(per_example(reset, x), best_grad, grad)
    return best_x, found, adversarial
