"""The per-example worst case over several attacks, run as a cascade (AutoAttack's robust-flags scheme)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping

import torch
from torch import nn

from robustlab.attacks.expectation import eot_draws, expected_correct
from robustlab.errors import require


class WorstCase:
    """Run `attacks` in order; each sees only the points that every earlier attack failed to break.

    Per example, the returned point is the one with the lowest (expected) correctness found by any attack,
    so its accuracy is at most each attack's own on the same run, and the later, costlier attacks only
    spend time on the points that still stand.
    """

    def __init__(self, attacks: Mapping[str, Callable]) -> None:
        require(len(attacks) >= 1, "attacks", dict(attacks), "at least one attack")
        self.attacks = dict(attacks)
        norms = {getattr(attack, "norm", None) for attack in self.attacks.values()}
        self.norm = norms.pop() if len(norms) == 1 else "mixed"  # the threat model, when all attacks share one
        self.eps = max(float(getattr(attack, "eps", 0.0)) for attack in self.attacks.values())


    @property
    def eot_samples(self) -> int | None:
        """None (automatic) only if every attack of the cascade chooses its EOT draws automatically."""
        automatic = all(getattr(attack, "eot_samples", 1) is None for attack in self.attacks.values())
        return None if automatic else 1

    @eot_samples.setter
    def eot_samples(self, value: int | None) -> None:
        """Set the draws of every attack of the cascade (on copies: other holders of the attacks are unaffected)."""
        attacks = {}
        for name, attack in self.attacks.items():
            attack = copy.copy(attack)
            if hasattr(attack, "eot_samples"):
                attack.eot_samples = value
            attacks[name] = attack
        self.attacks = attacks

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = x.detach()
        draws = eot_draws(None, model, x)
        best, correct = x.clone(), expected_correct(model, x, y, draws)
        for attack in self.attacks.values():
            standing = (correct > 0).nonzero().squeeze(1)
            if len(standing) == 0:
                break
            candidate = attack(model, x[standing], y[standing])
            candidate_correct = expected_correct(model, candidate, y[standing], draws)
            better = candidate_correct < correct[standing]
            best[standing[better]] = candidate[better]
            correct[standing[better]] = candidate_correct[better]
        return best

    def __repr__(self) -> str:
        return f"WorstCase({', '.join(self.attacks)})"
