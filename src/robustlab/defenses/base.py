"""What a defense is (the `Defense` interface), its stages, and the checks every defense shares."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

import torch
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


def check_selection_metric(selection_metric: str) -> str:
    require(isinstance(selection_metric, str) and selection_metric in SELECTION_METRICS, "selection_metric",
            selection_metric, f"one of {', '.join(SELECTION_METRICS)}")
    return selection_metric


class Defense(nn.Module):
    """The interface every defense implements: a training loss, a deployed predictor, and the stages that train it.

    - `training_loss(model, x, y)`: the loss of one batch and the logits it was computed on (for `train/acc`);
      it trains through `wrap(model)`, what is deployed, unless the defense says in one line why not;
    - `wrap(model)`: the deployed predictor, what is evaluated and what every attack sees (default: the model);
    - `stages()`: one Lightning fit each (default: one, `train`); `begin_stage(k)` before stage k, None after
      the last; `self.stage` is the index of the stage being trained (the last one once trained);
    - `trainable_parameters(model)`: what the optimizer of the current stage updates;
    - `test_metrics(model, x, x_adv)`: per-example diagnostics on an attacked test batch (e.g. PSNR);
    - `selection_metric`: the validation metric that picks the best checkpoint (`SELECTION_METRICS`).

    A defense is an `nn.Module` so that whatever it deploys (a denoiser, mixture members) is saved with the
    checkpoint.
    """

    selection_metric: str = "val/acc"

    def __init__(self) -> None:
        super().__init__()
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
        yield from model.parameters()
        yield from self.parameters()

    def training_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> TrainingLoss:
        raise NotImplementedError

    def wrap(self, model: nn.Module) -> nn.Module:
        return model

    def test_metrics(self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor) -> dict[str, torch.Tensor]:
        return {}
