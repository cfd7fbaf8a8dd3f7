"""Attacks: `attack(model, x, y) -> x_adv`, images in [0, 1], the model passed at call time (contract: `base`)."""

from robustlab.attacks.a3 import A3
from robustlab.attacks.adapter import TorchAttacks
from robustlab.attacks.apgd import APGD
from robustlab.attacks.arc import ARC
from robustlab.attacks.autoattack import AutoAttack
from robustlab.attacks.base import Attack
from robustlab.attacks.cascade import WorstCase
from robustlab.attacks.fab import FAB
from robustlab.attacks.identity import NoAttack
from robustlab.attacks.msd import MSD
from robustlab.attacks.pgd import PGD
from robustlab.attacks.sparse_rs import SparseRS
from robustlab.attacks.square import Square

__all__ = ["A3", "APGD", "ARC", "AutoAttack", "Attack", "FAB", "MSD", "NoAttack", "PGD", "SparseRS", "Square",
           "TorchAttacks", "WorstCase"]
