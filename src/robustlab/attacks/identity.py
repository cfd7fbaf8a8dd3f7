"""The empty attack: x itself. With it, clean accuracy is one more column of the matrix."""

from __future__ import annotations

from robustlab.attacks.base import Attack


class NoAttack(Attack):
    """`attack(model, x, y) -> x`: its budget ε is 0, so `Attack.__call__` returns a copy of x."""

    def __repr__(self) -> str:
        return "NoAttack()"
