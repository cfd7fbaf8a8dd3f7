"""Projected gradient descent (Madry et al. 2018) under L∞ or L2; FGSM is its one-step, no-start case."""

from __future__ import annotations

import torch
from torch import nn

from robustlab.attacks.batching import in_chunks
from robustlab.attacks.expectation import check_eot_samples, eot_draws
from robustlab.attacks.gradient import input_gradient, loss_and_correct
from robustlab.attacks.norms import ball, project_image
from robustlab.errors import is_integer, is_number, require


class PGD:
    """Maximise cross-entropy inside the ε-ball; with restarts, keep each example's worst case.

    `step_size=None` uses 2.5·ε/steps, enough to cross the ball from any start. `chunk_size`: see
    `robustlab.attacks.batching` (eval-mode CPU batches are attacked in chunks of this many images).
    `eot_samples`: gradient draws per step on a randomized predictor; None picks 10 when the predictor is
    detected as randomized and 1 otherwise (see `robustlab.attacks.expectation`).
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
    ) -> None:
        self.threat = ball(norm, eps)
        require(is_integer(steps) and steps >= 1, "steps", steps, "an integer ≥ 1")
        require(is_integer(restarts) and restarts >= 1, "restarts", restarts, "an integer ≥ 1")
        require(chunk_size is None or (is_integer(chunk_size) and chunk_size >= 1), "chunk_size", chunk_size,
                "an integer ≥ 1, or null for whole batches")
        check_eot_samples(eot_samples)
        require(isinstance(random_start, bool), "random_start", random_start, "true or false")
        if step_size is None:
            step_size = 2.5 * eps / steps
        require(is_number(step_size) and step_size >= 0, "step_size", step_size,
                "a number ≥ 0, or null for 2.5·eps/steps")
        self.eps = float(eps)
        self.norm = norm
        self.steps = steps
        self.step_size = float(step_size)
        self.random_start = random_start
        self.restarts = restarts
        self.chunk_size = chunk_size
        self.eot_samples = eot_samples

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = x.detach()
        if self.eps == 0 or self.step_size == 0:
            return x.clone()
        draws = eot_draws(self.eot_samples, model, x)
        return in_chunks(lambda *batch: self._worst_of_restarts(*batch, draws), model, x, y, self.chunk_size)

    def _worst_of_restarts(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int) -> torch.Tensor:
        best = self._run(model, x, y, draws)
        if self.restarts == 1:
            return best
        best_loss, best_correct = loss_and_correct(model, best, y, draws)
        for _ in range(self.restarts - 1):
            candidate = self._run(model, x, y, draws)
            loss, correct = loss_and_correct(model, candidate, y, draws)
            # A misclassified point beats a correct one; between equals, the higher loss wins.
            better = (best_correct & ~correct) | ((best_correct == correct) & (loss > best_loss))
            best = torch.where(better.view(-1, *([1] * (x.dim() - 1))), candidate, best)
            best_loss = torch.where(better, loss, best_loss)
            best_correct = best_correct & correct
        return best

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int) -> torch.Tensor:
        x_adv = x.clone()
        if self.random_start:
            x_adv = project_image(x, x + self.threat.random(x, self.eps), self.threat, self.eps)
        for _ in range(self.steps):
            grad = input_gradient(model, x_adv, y, draws)
            x_adv = project_image(x, x_adv + self.step_size * self.threat.ascent_direction(grad), self.threat, self.eps)
        return x_adv.detach()

    def __repr__(self) -> str:
        return (f"PGD(norm={self.norm}, eps={self.eps:g}, steps={self.steps}, step_size={self.step_size:g}, "
                f"random_start={self.random_start}, restarts={self.restarts}, eot_samples={self.eot_samples})")
