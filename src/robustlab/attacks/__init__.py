"""Attacks: `attack(model, x, y) -> x_adv`, images in [0, 1], the model passed at call time."""

from robustlab.attacks.identity import NoAttack
from robustlab.attacks.pgd import PGD

__all__ = ["NoAttack", "PGD"]
