"""A3, a budgeted strong attack: Adaptive Auto Attack's untargeted rounds, then MALT's targeted runs.

The untargeted part follows A3 (Liu et al., CVPR 2022):

- **margin loss** max_{i≠y} z_i − z_y, raised by sign (L∞) or normalized (L2) gradient steps whose size follows
  a **cosine schedule** from ε down to ε/1000 (ε/10 for runs of ≤ 10 steps);
- **online discarding**: within a round, an image leaves the batch at the step it is misclassified (it costs no
  further pass); each round after the first attacks only the `keep` fraction of the images still standing with
  the smallest margin found so far, where another restart is most likely to pay;
- **adaptive direction initialization** from the second round on: `init_steps` steps of size ε that raise w·z for
  a random direction w over the logits, biased towards one runner-up class (w = 1 on it, below 0 on the label).
  Which runner-up is chosen is learnt online: the rank, among each image's wrong classes ordered by clean logit,
  of the class that earlier successes ended in; round r pushes the r-th most frequent rank.

The targeted part is APGD-T on the targeted DLR loss towards `targets` classes per image, ranked by MALT's
linearized distance to each boundary (`targeting.nearest_boundaries`) rather than by logit: MALT (Melamed et al.,
NeurIPS 2024) keeps every AutoAttack success with 3 targets ranked this way, where AutoAttack runs 9. A3's own
target statistics only bias the initialization above; the ranking that decides where 100-step runs are spent is
MALT's, because it looks at each image's own boundaries instead of population counts.

Every stage runs only on the images still standing. On a randomized predictor each loss and gradient is an
expectation (`draws` passes, or a mixture's exact sum), as in every attack; an image counts as broken in a round
when every draw misclassifies it, and the returned point is judged over the predictor's randomness.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from robustlab.attacks.apgd import APGD
from robustlab.attacks.base import Attack, WorstSoFar
from robustlab.attacks.expectation import check_eot_samples, expected_correct, expected_logits
from robustlab.attacks.gradient import loss_and_gradient
from robustlab.attacks.losses import margin
from robustlab.attacks.norms import DENSE, ball, project_image
from robustlab.attacks.targeting import wrong_classes_by_logit
from robustlab.errors import is_integer, is_number, require


def cosine_step_sizes(eps: float, steps: int) -> list[float]:
    """A3's step sizes: from ε at the first step down a half cosine towards ε/1000 (ε/10 for ≤ 10 steps)."""
    smallest = eps * (0.1 if steps <= 10 else 0.001)
    return [smallest + (eps - smallest) * (1 + math.cos(math.pi * k / (steps + 1))) / 2 for k in range(steps)]


class A3(Attack):
    """`rounds` untargeted rounds of `steps` margin-loss steps (the first from a random start, the others after
    `init_steps` steps of adaptive direction initialization, each on the `keep` fraction of standing images with
    the smallest margin), then APGD-T with `target_steps` steps towards each of `targets` classes ranked by
    linearized boundary distance. `rounds` or `targets` may be 0 (not both)."""

    def __init__(self, eps: float, norm: str = "linf", rounds: int = 12, steps: int = 50, init_steps: int = 5,
                 keep: float = 0.2, targets: int = 3, target_steps: int = 100, chunk_size: int | None = 256,
                 eot_samples: int | None = None) -> None:
        self.threat = ball(norm, eps, DENSE)
        for name, value in (("rounds", rounds), ("init_steps", init_steps), ("targets", targets)):
            require(is_integer(value) and value >= 0, name, value, "an integer ≥ 0")
        require(is_integer(steps) and steps >= 1, "steps", steps, "an integer ≥ 1 (margin-loss steps per round)")
        require(is_integer(target_steps) and target_steps >= 1, "target_steps", target_steps,
                "an integer ≥ 1 (APGD-T steps per target)")
        require(rounds + targets > 0, "rounds", rounds, "an integer ≥ 1 while targets is 0: with rounds = 0 and "
                "targets = 0 the attack would spend no iteration")
        require(is_number(keep) and 0 < keep <= 1, "keep", keep,
                "a number in (0, 1]: the fraction of standing images each round after the first attacks")
        require(chunk_size is None or (is_integer(chunk_size) and chunk_size >= 1), "chunk_size", chunk_size,
                "an integer ≥ 1, or null for whole batches")
        check_eot_samples(eot_samples)
        self.eps, self.norm, self.rounds, self.steps, self.init_steps = float(eps), norm, rounds, steps, init_steps
        self.keep, self.targets, self.target_steps = float(keep), targets, target_steps
        self.chunk_size, self.eot_samples = chunk_size, eot_samples
        self.targeted = APGD(eps, norm, loss="dlr", steps=target_steps, targets=targets, ranking="boundary",
                             eot_samples=eot_samples) if targets else None

    def attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int) -> torch.Tensor:
        worst = WorstSoFar(x, expected_correct(model, x, y, draws))
        ranked = wrong_classes_by_logit(expected_logits(model, x, draws), y)
        successes = torch.zeros(ranked.shape[1], device=x.device)  # breaks per runner-up rank, learnt online
        smallest_margin = torch.full((len(x),), float("inf"), device=x.device)
        stages = self.rounds + (1 if self.targeted is not None else 0)
        for round_ in range(self.rounds):
            standing = (worst.score > 0).nonzero().squeeze(1)
            if round_ > 0:  # online discarding: the smallest margins, where a restart is most likely to pay
                kept = math.ceil(self.keep * len(standing))
                standing = standing[smallest_margin[standing].argsort(stable=True)[:kept]]
            if len(standing) == 0:
                break
            direction = None if round_ == 0 else self._initial_direction(y[standing], ranked[standing],
                                                                           successes, round_)
            candidate, lowest, predicted = self._round(model, x[standing], y[standing], draws, direction,
                                                       (round_, stages))
            smallest_margin[standing] = torch.minimum(smallest_margin[standing], lowest)
            broken = predicted != y[standing]
            ranks = (ranked[standing][broken] == predicted[broken, None]).float().argmax(dim=1)
            successes += torch.bincount(ranks, minlength=len(successes)).float()
            worst.offer(candidate, expected_correct(model, candidate, y[standing], draws), standing)
            self.advance((round_ + 1) / stages)
        standing = (worst.score > 0).nonzero().squeeze(1)
        if self.targeted is not None and len(standing) > 0:
            if self.progress is not None:
                self.targeted.progress = lambda done: self.advance((self.rounds + done) / stages)
            try:
                candidate = self.targeted.attack(model, x[standing], y[standing], draws)
            finally:
                self.targeted.progress = None
            worst.offer(candidate, expected_correct(model, candidate, y[standing], draws), standing)
        return worst.x

    def _initial_direction(self, y: torch.Tensor, ranked: torch.Tensor, successes: torch.Tensor, round_: int
                           ) -> torch.Tensor:
        """A random direction over the logits, uniform in [−1, 1], set to 1 on the runner-up class of the rank
        that round `round_` pushes (the (round − 1)-th most frequent rank of earlier successes) and to a random
        value in [−0.5, 0.1] on the label."""
        order = successes.argsort(descending=True, stable=True)
        rank = order[(round_ - 1) % len(order)]
        direction = torch.empty(len(y), ranked.shape[1] + 1, device=y.device).uniform_(-1.0, 1.0)
        rows = torch.arange(len(y), device=y.device)
        direction[rows, ranked[:, rank]] = 1.0
        direction[rows, y] = torch.empty(len(y), device=y.device).uniform_(-0.5, 0.1)
        return direction

    def _round(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int,
               direction: torch.Tensor | None, stage: tuple[int, int]
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One round on a batch: per image, the point found (misclassified on every draw where one was found, else
        the one with the smallest margin), that margin, and the class predicted there (y where none broke it)."""
        x_k = project_image(x, x + self.threat.random(x, self.eps), self.threat, self.eps)
        if direction is not None:
            def along(logits: torch.Tensor, _labels: torch.Tensor) -> torch.Tensor:
                return (logits * direction).sum(dim=1)

            for _ in range(self.init_steps):
                _, grad = loss_and_gradient(model, x_k, y, draws, along)
                x_k = project_image(x, x_k + self.eps * self.threat.ascent_direction(grad), self.threat, self.eps)
        best_x, lowest = x_k.clone(), torch.full((len(x),), float("inf"), device=x.device)
        predicted = y.clone()
        active = torch.arange(len(x), device=x.device)  # not yet broken: only these take further passes
        sizes = cosine_step_sizes(self.eps, self.steps)
        votes: list[torch.Tensor] = []

        def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            votes.append(logits.detach().argmax(1))  # every draw's answer, for free
            return -margin(logits, labels)

        for k in range(self.steps + 1):
            here, labels = x_k[active], y[active]
            value, grad = loss_and_gradient(model, here, labels, draws, loss)
            answers = torch.stack(votes)
            votes.clear()
            fooled = (answers != labels).all(dim=0)
            kept = fooled | (-value < lowest[active])
            best_x[active[kept]] = here[kept]
            lowest[active] = torch.minimum(lowest[active], -value)
            predicted[active[fooled]] = answers[0][fooled]
            active, here, grad = active[~fooled], here[~fooled], grad[~fooled]
            if k == self.steps or len(active) == 0:
                break
            self.advance((stage[0] + (k + 1) / self.steps) / stage[1])
            stepped = here + sizes[k] * self.threat.ascent_direction(grad)
            x_k[active] = project_image(x[active], stepped, self.threat, self.eps)
        return best_x, lowest, predicted

    def with_eot_samples(self, eot_samples: int | None) -> A3:
        return A3(self.eps, self.norm, self.rounds, self.steps, self.init_steps, self.keep, self.targets,
                  self.target_steps, self.chunk_size, eot_samples)

    def __repr__(self) -> str:
        return (f"A3(norm={self.norm}, eps={self.eps:g}, rounds={self.rounds}, steps={self.steps}, "
                f"init_steps={self.init_steps}, keep={self.keep:g}, targets={self.targets}, "
                f"target_steps={self.target_steps}, eot_samples={self.eot_samples})")
