"""Randomized smoothing (Cohen, Rosenfeld & Kolter 2019): a base classifier under Gaussian noise, deployed as a vote.

The smoothed classifier g(x) = argmax_c P(f(x + δ) = c), δ ~ N(0, σ²I), is what is deployed. It is estimated
by a vote over noisy copies (Cohen et al.'s PREDICT), which abstains when the two leading classes are not
told apart at level α. An attack cannot differentiate a vote, so `forward` is one noisy pass of the base
classifier: the attacks average it over draws (EOT, `robustlab.attacks.expectation`), which is the expected
loss over the noise, and the evaluation scores their examples by the vote (`vote`). Certificates are
computed from the same noisy counts (`robustlab.evaluation.certification`).
"""

from __future__ import annotations

import torch
from scipy.stats import binom
from torch import nn

from robustlab.errors import is_integer, is_number, require

ABSTAIN = -1  # the class `vote` answers when it cannot tell the two leading classes apart


class SmoothedClassifier(nn.Module):
    """`model` smoothed by N(0, σ²) pixel noise: `forward` is one noisy pass, `vote` the deployed decision.

    - `sigma`: the noise's standard deviation in pixel units (images in [0, 1]; noisy copies are not clipped);
    - `votes`: noisy copies per image in the deployed vote;
    - `alpha`: the vote abstains unless a two-sided binomial test between the two leading classes rejects a
      tie at this level (so a wrong answer has probability at most α);
    - `chunk_size`: noisy copies per forward pass when counting votes (speed and memory, not the result).
    """

    def __init__(self, model: nn.Module, sigma: float, votes: int = 100, alpha: float = 0.001,
                 chunk_size: int = 256) -> None:
        super().__init__()
        require(is_number(sigma) and sigma > 0, "sigma", sigma, "a number > 0 (pixel units)")
        require(is_integer(votes) and votes >= 1, "votes", votes, "an integer ≥ 1")
        require(is_number(alpha) and 0 < alpha < 1, "alpha", alpha, "a number in (0, 1)")
        require(is_integer(chunk_size) and chunk_size >= 1, "chunk_size", chunk_size, "an integer ≥ 1")
        self.model = model
        self.sigma, self.votes, self.alpha, self.chunk_size = float(sigma), votes, float(alpha), chunk_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The base classifier's logits on one noisy copy of each image."""
        return self.model(x + self.sigma * torch.randn_like(x))

    @torch.no_grad()
    def class_counts(self, x: torch.Tensor, draws: int) -> torch.Tensor:
        """Per image, how many of `draws` noisy copies the base classifier puts in each class (B × classes)."""
        counts: torch.Tensor | None = None
        total = len(x) * draws  # copy k is of image k mod B
        for start in range(0, total, self.chunk_size):
            images = torch.arange(start, min(start + self.chunk_size, total), device=x.device) % len(x)
            logits = self(x[images])
            if counts is None:
                counts = torch.zeros(len(x), logits.shape[1], dtype=torch.long, device=x.device)
            counts.view(-1).scatter_add_(0, images * logits.shape[1] + logits.argmax(1),
                                         torch.ones_like(images))
        if counts is None:
            raise ValueError("class_counts needs at least one image and one draw")
        return counts

    @torch.no_grad()
    def vote(self, x: torch.Tensor, votes: int | None = None, alpha: float | None = None) -> torch.Tensor:
        """Cohen et al.'s PREDICT: the leading class of `votes` noisy copies, or `ABSTAIN` where a two-sided
        binomial test (n_A successes of n_A + n_B) does not reject a tie between the two leading classes at α."""
        counts = self.class_counts(x, self.votes if votes is None else votes)
        top = counts.topk(2, dim=1)
        n_a, n_b = top.values[:, 0], top.values[:, 1]
        p_value = tie_p_value(n_a, n_a + n_b)
        return torch.where(p_value > (self.alpha if alpha is None else alpha),
                           torch.full_like(n_a, ABSTAIN), top.indices[:, 0])

    def extra_repr(self) -> str:
        return f"sigma={self.sigma:g}, votes={self.votes}, alpha={self.alpha:g}"


def tie_p_value(successes: torch.Tensor, trials: torch.Tensor) -> torch.Tensor:
    """The two-sided binomial test's p-value of `successes` ≥ trials/2 against p = 1/2, elementwise."""
    k, n = successes.cpu().numpy(), trials.cpu().numpy()
    upper_tail = binom.sf(k - 1, n, 0.5)  # P(X ≥ k)
    return torch.as_tensor((2 * upper_tail).clip(max=1.0), device=successes.device)
