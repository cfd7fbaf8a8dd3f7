"""The per-example worst case over several attacks, run as a cascade (AutoAttack's robust-flags scheme)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from robustlab.attacks.base import Attack, WorstSoFar
from robustlab.attacks.expectation import eot_draws, expected_correct
from robustlab.errors import require


class WorstCase(Attack):
    """Run `attacks` in order; each sees only the points that every earlier attack failed to break.

    Per example, the returned point is the one with the lowest (expected) correctness found by any attack,
    so its accuracy is at most each attack's own on the same run, and the later, costlier attacks only
    spend time on the points that still stand. Its `eps` is the largest of the attacks', its `norm` theirs
    when they share one ("mixed" otherwise), its `eot_samples` None (automatic) only if all of theirs are.
    """

    def __init__(self, attacks: Mapping[str, Attack]) -> None:
        require(len(attacks) >= 1 and all(isinstance(a, Attack) for a in attacks.values()), "attacks",
                dict(attacks), "at least one attack config")
        self.attacks = dict(attacks)
        norms = {attack.norm for attack in self.attacks.values()}
        self.norm = norms.pop() if len(norms) == 1 else "mixed"
        self.eps = max(attack.eps for attack in self.attacks.values())
        self.eot_samples = None if all(a.eot_samples is None for a in self.attacks.values()) else 1

    def balls(self) -> list[tuple[str, float]]:
        """Each image is one of the attacks' points, so it lies in one of their balls."""
        return [ball for attack in self.attacks.values() for ball in attack.balls()]

    def with_eot_samples(self, eot_samples: int | None) -> WorstCase:
        """The cascade with every attack's draws set (copies: other holders of the attacks are unaffected)."""
        return WorstCase({name: attack.with_eot_samples(eot_samples) for name, attack in self.attacks.items()})

    def attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int) -> torch.Tensor:
        # Points are judged over the predictor's randomness, whatever the attacks' draws.
        draws = eot_draws(None, model, x)
        worst = WorstSoFar(x, expected_correct(model, x, y, draws))
        for index, attack in enumerate(self.attacks.values()):
            standing = (worst.score > 0).nonzero().squeeze(1)
            if len(standing) == 0:
                break
            candidate = attack(model, x[standing], y[standing])
            worst.offer(candidate, expected_correct(model, candidate, y[standing], draws), standing)
            self.advance((index + 1) / len(self.attacks))
        return worst.x

    def __repr__(self) -> str:
        return f"WorstCase({', '.join(self.attacks)})"
