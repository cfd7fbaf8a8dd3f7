"""Projected gradient descent (Madry et al. 2018) under L∞, L2, L1 or L0; FGSM is its one-step, no-start case.

Under L1 the step is SLIDE's (Tramèr & Boneh 2019): the signs of the `l1_share` of features with the largest
gradient that can still move that way inside [0, 1], spread over them, projected onto the L1 ball ∩ box. Under L0
it is PGD-L0 (Croce & Hein 2019): a step along the gradient scaled to unit L1 norm, projected onto "at most ε
pixels changed" ∩ box, from a random image projected the same way.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from robustlab.attacks.base import Attack, WorstSoFar
from robustlab.attacks.expectation import check_eot_samples
from robustlab.attacks.gradient import loss_and_correct, loss_and_gradient
from robustlab.attacks.losses import loss_function
from robustlab.attacks.norms import L0Ball, L1Ball, ball, image_projector
from robustlab.errors import is_integer, is_number, require

L0_STEP = 120000.0 / 255.0 / 2.0  # PGD-L0's step on the unit-L1 gradient (Croce & Hein 2019's run_attack.py)


class PGD(Attack):
    """Maximise `loss` (cross-entropy by default) inside the ε-ball; with restarts, keep each example's worst case.

    `step_size=None` uses 2.5·ε/steps, enough to cross the ball from any start. `chunk_size`: see
    `robustlab.attacks.batching` (eval-mode CPU batches are attacked in chunks of this many images).
    `eot_samples`: gradient draws per step on a randomized predictor; None picks 10 when the predictor is
    detected as randomized and 1 otherwise (see `robustlab.attacks.expectation`). `loss`: a name of
    `losses.LOSSES`, or any per-example loss function (TRADES passes its KL divergence). Under L0, ε is a number
    of pixels and `step_size=None` is the reference's 120000/255/2 on the unit-L1 gradient. `l1_share`: the share
    of features an L1 step moves (SLIDE's 1 − q/100; 0.01 is its q = 99).
    """

    def __init__(
        self,
        eps: float,
        norm: str = "linf",
        steps: int = 20,
        step_size: float | None = None,
        random_start: bool = True,
        restarts: int = 1,
        chunk_size: int | None = 256,
        eot_samples: int | None = None,
        loss: str | Callable = "ce",
        l1_share: float = 0.01,
    ) -> None:
        self.threat = ball(norm, eps)
        require(is_integer(steps) and steps >= 1, "steps", steps, "an integer ≥ 1")
        require(is_integer(restarts) and restarts >= 1, "restarts", restarts, "an integer ≥ 1")
        require(chunk_size is None or (is_integer(chunk_size) and chunk_size >= 1), "chunk_size", chunk_size,
                "an integer ≥ 1, or null for whole batches")
        check_eot_samples(eot_samples)
        require(isinstance(random_start, bool), "random_start", random_start, "true or false")
        require(is_number(l1_share) and 0 < l1_share <= 1, "l1_share", l1_share, "a number in (0, 1]")
        if step_size is None:
            step_size = L0_STEP if self.threat is L0Ball else 2.5 * eps / steps
        require(is_number(step_size) and step_size >= 0, "step_size", step_size,
                "a number ≥ 0, or null for 2.5·eps/steps")
        self.loss_fn = loss_function(loss)
        self.eps = float(eps)
        self.norm = norm
        self.steps = steps
        self.step_size = float(step_size)
        self.random_start = random_start
        self.restarts = restarts
        self.chunk_size = chunk_size
        self.eot_samples = eot_samples
        self.loss = loss if isinstance(loss, str) else getattr(loss, "__name__", repr(loss))
        self.l1_share = float(l1_share)

    def does_nothing(self) -> bool:
        return self.eps == 0 or self.step_size == 0

    def attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int) -> torch.Tensor:
        best = self.ascend(model, x, y, self.start(x), draws, restart=0)
        if self.restarts == 1:
            return best
        worst = WorstSoFar(best, self._score(model, best, y, draws))
        for restart in range(1, self.restarts):
            candidate = self.ascend(model, x, y, self.start(x), draws, restart)
            worst.offer(candidate, self._score(model, candidate, y, draws))
        return worst.x

    def _score(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int) -> torch.Tensor:
        """A misclassified point beats a correct one; between equals, the higher loss wins."""
        loss, correct = loss_and_correct(model, x, y, draws)
        return torch.stack([correct.float(), -loss], dim=1)

    def start(self, x: torch.Tensor) -> torch.Tensor:
        """A random image of the ball (in [0, 1], the ball's `start`) with `random_start`, else x."""
        if not self.random_start:
            return x.clone()
        return self.threat.start(x, self.eps)

    def direction(self, x_adv: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """The step's direction: the ball's steepest ascent; under L1 over the features that can still move."""
        if self.threat is L1Ball:
            return L1Ball.movable_ascent(x_adv, grad, self.l1_share)
        return self.threat.ascent_direction(grad)

    def ascend(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, start: torch.Tensor,
               draws: int = 1, restart: int = 0) -> torch.Tensor:
        """`steps` steepest-ascent steps of `loss(model(·), target)` from `start`, each projected onto the ball."""
        x_adv, project = start, image_projector(x, self.threat, self.eps)
        for step in range(self.steps):
            grad = loss_and_gradient(model, x_adv, target, draws, self.loss_fn)[1]
            x_adv = project(torch.add(x_adv, self.direction(x_adv, grad), alpha=self.step_size))
            self.advance((restart + (step + 1) / self.steps) / self.restarts)
        return x_adv.detach()

    def __repr__(self) -> str:
        return (f"PGD(norm={self.norm}, eps={self.eps:g}, steps={self.steps}, step_size={self.step_size:g}, "
                f"random_start={self.random_start}, restarts={self.restarts}, eot_samples={self.eot_samples}"
                + ("" if self.loss == "ce" else f", loss={self.loss}")
                + (f", l1_share={self.l1_share:g}" if self.norm == "l1" else "") + ")")
