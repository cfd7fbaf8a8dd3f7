"""TRADES (Zhang et al. 2019): clean cross-entropy plus β × KL between clean and adversarial predictions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.attacks.norms import ball, project_image
from robustlab.defenses.base import Defense, TrainingLoss
from robustlab.errors import is_integer, is_number, require


def _kl_to(target_probabilities: torch.Tensor, logits: torch.Tensor, reduction: str) -> torch.Tensor:
    return F.kl_div(F.log_softmax(logits, dim=1), target_probabilities, reduction=reduction)


class TRADES(Defense):
    """The inner maximisation moves x′ in the ε-ball to maximise KL(f(x) ‖ f(x′)), starting 0.001·N(0, 1) from x.

    `step_size=None` uses 2.5·ε/steps. β trades clean accuracy (small) for robustness (large; 6 in the paper).
    """

    def __init__(self, eps: float, beta: float = 6.0, norm: str = "linf", steps: int = 10,
                 step_size: float | None = None, selection_metric: str = "val/robust_acc") -> None:
        super().__init__(selection_metric)
        self.threat = ball(norm, eps)
        require(is_number(beta) and beta >= 0, "beta", beta, "a number ≥ 0")
        require(is_integer(steps) and steps >= 1, "steps", steps, "an integer ≥ 1")
        step_size = 2.5 * eps / steps if step_size is None else step_size
        require(is_number(step_size) and step_size > 0, "step_size", step_size,
                "a number > 0, or null for 2.5·eps/steps")
        self.eps, self.beta, self.norm, self.steps, self.step_size = float(eps), float(beta), norm, steps, float(step_size)

    def adversarial_examples(self, model: nn.Module, x: torch.Tensor, clean_probabilities: torch.Tensor) -> torch.Tensor:
        x = x.detach()
        x_adv = project_image(x, x + 0.001 * torch.randn_like(x), self.threat, self.eps)
        for _ in range(self.steps):
            x_adv.requires_grad_(True)
            with torch.enable_grad():
                divergence = _kl_to(clean_probabilities, model(x_adv), reduction="sum")
                (grad,) = torch.autograd.grad(divergence, x_adv)
            x_adv = project_image(x, x_adv.detach() + self.step_size * self.threat.ascent_direction(grad),
                                  self.threat, self.eps)
        return x_adv.detach()

    def training_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> TrainingLoss:
        logits = model(x)
        x_adv = self.adversarial_examples(model, x, F.softmax(logits.detach(), dim=1))
        robust = _kl_to(F.softmax(logits, dim=1), model(x_adv), reduction="batchmean")
        return TrainingLoss(F.cross_entropy(logits, y) + self.beta * robust, logits)

    def extra_repr(self) -> str:
        return f"norm={self.norm}, eps={self.eps:g}, beta={self.beta:g}, steps={self.steps}, step_size={self.step_size:g}"
