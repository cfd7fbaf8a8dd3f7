"""A user's own attack: PGD under L∞ on the margin loss (Carlini & Wagner's), written against robustlab's
attack contract: `attack(model, x, y, draws) -> x_adv` inside the ε-ball and [0, 1]."""

import torch

from robustlab.attacks.base import Attack


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per image, the best other class's logit minus the true one's: positive once the image is misclassified."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    return other - true


class MarginPGD(Attack):
    def __init__(self, eps: float, steps: int = 10, eot_samples: int | None = None) -> None:
        self.eps, self.norm, self.steps, self.eot_samples = float(eps), "linf", steps, eot_samples
        self.step_size = 2.5 * self.eps / steps

    def attack(self, model, x: torch.Tensor, y: torch.Tensor, draws: int) -> torch.Tensor:
        x_adv = (x + torch.empty_like(x).uniform_(-self.eps, self.eps)).clamp(0, 1)
        for step in range(self.steps):
            x_adv.requires_grad_(True)
            loss = sum(margin(model(x_adv), y).sum() for _ in range(draws)) / draws  # EOT over `draws` passes
            grad, = torch.autograd.grad(loss, x_adv)
            x_adv = x_adv.detach() + self.step_size * grad.sign()
            x_adv = torch.min(torch.max(x_adv, x - self.eps), x + self.eps).clamp(0, 1)
            self.advance((step + 1) / self.steps)  # robustlab's progress bar
        return x_adv
