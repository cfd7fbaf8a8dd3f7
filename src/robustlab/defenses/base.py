"""What a defense is: a training loss, a deployment wrapper, and the stages that train it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.errors import is_integer, require

# Validation metrics a checkpoint can be selected by (the higher the better).
SELECTION_METRICS = ("val/acc", "val/robust_acc")


def check_epochs(**epochs: int | None) -> None:
    """A multi-stage defense's epochs per stage: each an integer ≥ 1, or None for `trainer.max_epochs`."""
    for field, value in epochs.items():
        require(value is None or (is_integer(value) and value >= 1), field, value,
                "an integer ≥ 1, or null for trainer.max_epochs")


class TrainingLoss(NamedTuple):
    loss: torch.Tensor
    logits: torch.Tensor  # on the inputs the loss was computed on, for train/acc


class Stage(NamedTuple):
    """One Lightning fit of a (possibly multi-stage) defense.

    `epochs=None` uses `trainer.max_epochs`; `selection_metric` picks the stage's best checkpoint;
    `weights_from`, a robustlab checkpoint, makes the stage load the classifier's weights from it instead
    of training.
    """

    name: str
    epochs: int | None = None
    selection_metric: str = "val/acc"
    weights_from: str | None = None


@contextmanager
def evaluation_mode(*modules: nn.Module):
    """Put trained, frozen parts in eval mode (no batch-norm statistics updates) for the duration."""
    modes = [module.training for module in modules]
    for module in modules:
        module.eval()
    try:
        yield
    finally:
        for module, mode in zip(modules, modes):
            module.train(mode)


class Defense(nn.Module):
    """Training on `attack`'s examples (none: clean images) through `wrapper`, which is also deployed.

    - `attack=None, wrapper=None` is standard training;
    - `attack` (a training attack, e.g. PGD-7) is adversarial training (Madry et al. 2018), and with a
      one-step random-start attack, fast adversarial training (Wong et al. 2020);
    - `wrapper` (a module factory, e.g. a partial `NoisyModel`) turns the model into the deployed
      predictor; training, the training attack and every evaluation attack all go through it.

    A defense is an `nn.Module` so that whatever it deploys (a denoiser, mixture members) is saved with the
    checkpoint. Subclasses with several stages override `stages`, `trainable_parameters`, `training_loss`
    and `wrap`, reading `self.stage` (the index of the stage being trained; the last one once trained).
    """

    def __init__(self, selection_metric: str = "val/acc", attack: Callable | None = None,
                 wrapper: Callable[[nn.Module], nn.Module] | None = None) -> None:
        super().__init__()
        require(isinstance(selection_metric, str) and selection_metric in SELECTION_METRICS, "selection_metric",
                selection_metric, f"one of {', '.join(SELECTION_METRICS)}")
        require(attack is None or callable(attack), "attack", attack, "an attack config (an option of conf/attack), or null")
        require(wrapper is None or callable(wrapper), "wrapper", wrapper,
                "a partial module config (_partial_: true) that wraps the model, or null")
        self.selection_metric = selection_metric
        self.attack = attack
        self.wrapper = wrapper
        self._stage: int | None = None  # None: trained, deploy the whole pipeline

    @property
    def stage(self) -> int:
        return len(self.stages()) - 1 if self._stage is None else self._stage

    def stages(self) -> list[Stage]:
        return [Stage("train", selection_metric=self.selection_metric)]

    def begin_stage(self, index: int | None) -> None:
        """Train stage `index` next; None once training is over (the whole pipeline is deployed)."""
        self._stage = index

    def trainable_parameters(self, model: nn.Module) -> Iterator[nn.Parameter]:
        """What the optimizer of the current stage updates."""
        yield from model.parameters()
        yield from self.parameters()

    def training_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> TrainingLoss:
        predictor = self.wrap(model)
        if self.attack is not None:
            x = self.attack(predictor, x, y)
        logits = predictor(x)
        return TrainingLoss(F.cross_entropy(logits, y), logits)

    def wrap(self, model: nn.Module) -> nn.Module:
        """The deployed predictor: what is evaluated and what every attack sees."""
        return model if self.wrapper is None else self.wrapper(model)

    def test_metrics(self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-example diagnostics of the defense on one attacked test batch (e.g. a denoiser's PSNR)."""
        return {}

    def extra_repr(self) -> str:
        parts = [f"attack={self.attack!r}"] if self.attack is not None else []
        if self.wrapper is not None:
            parts.append(f"wrapper={self.wrapper!r}")
        return ", ".join(parts)
