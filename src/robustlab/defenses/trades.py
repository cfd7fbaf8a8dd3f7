"""TRADES (Zhang et al. 2019): clean cross-entropy plus β × KL between clean and adversarial predictions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.attacks.losses import kl_divergence
from robustlab.attacks.norms import project_image
from robustlab.attacks.pgd import PGD
from robustlab.defenses.base import Defense, TrainingLoss, check_selection_metric
from robustlab.errors import is_number, require


class TRADES(Defense):
    """The inner maximisation is PGD on KL(f(x) ‖ f(x′)), starting 0.001·N(0, 1) from x.

    `step_size=None` uses 2.5·ε/steps. β trades clean accuracy (small) for robustness (large; 6 in the paper).
    """

    def __init__(self, eps: float, beta: float = 6.0, norm: str = "linf", steps: int = 10,
                 step_size: float | None = None, selection_metric: str = "val/robust_acc") -> None:
        super().__init__()
        require(is_number(beta) and beta >= 0, "beta", beta, "a number ≥ 0")
        require(step_size is None or (is_number(step_size) and step_size > 0), "step_size", step_size,
                "a number > 0, or null for 2.5·eps/steps")
        self.selection_metric = check_selection_metric(selection_metric)
        self.inner = PGD(eps, norm, steps, step_size, random_start=False, chunk_size=None, eot_samples=1,
                         loss=kl_divergence)
        self.eps, self.beta, self.norm, self.steps = self.inner.eps, float(beta), norm, steps
        self.step_size = self.inner.step_size

    def adversarial_examples(self, model: nn.Module, x: torch.Tensor,
                             clean_probabilities: torch.Tensor) -> torch.Tensor:
        x = x.detach()
        start = project_image(x, x + 0.001 * torch.randn_like(x), self.inner.threat, self.eps)
        return self.inner.ascend(model, x, clean_probabilities, start)

    def training_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> TrainingLoss:
        model = self.wrap(model)
        logits = model(x)
        x_adv = self.adversarial_examples(model, x, F.softmax(logits.detach(), dim=1))
        robust = F.kl_div(F.log_softmax(model(x_adv), dim=1), F.softmax(logits, dim=1), reduction="batchmean")
        return TrainingLoss(F.cross_entropy(logits, y) + self.beta * robust, logits)

    def extra_repr(self) -> str:
        return (f"norm={self.norm}, eps={self.eps:g}, beta={self.beta:g}, steps={self.steps}, "
                f"step_size={self.step_size:g}")
