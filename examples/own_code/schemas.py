"""Schemas for this project's options (optional: an option without one has its keys checked against its class's
signature). `robustlab` imports this file before it composes a config; conf/attack/margin_pgd.yaml names its
schema first in its defaults list, so `attack.steps=abc` is refused while composing and `attack.steps=0` before
anything runs, each naming the key."""

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from robustlab.schema import integer, number, setting


@dataclass
class MarginPGDConfig:
    _target_: str = MISSING
    eps: float = setting(number(at_least=0, at_most=1, note="L∞, pixel units"))
    steps: int = setting(integer(1))


ConfigStore.instance().store(group="schema/attack", name="margin_pgd", node=MarginPGDConfig)
