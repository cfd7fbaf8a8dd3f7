"""The evaluation under DDP: Lightning's test loop over the engine's passes, only to start and join the processes.

It knows the engine only through `Steps`, what the loop calls, so the engine can hand itself over without the
two modules importing each other."""

from __future__ import annotations

from typing import Any, Protocol

import pytorch_lightning as pl
import torch
from torch import nn


class Steps(Protocol):
    """What Lightning's test loop needs of the evaluation (`engine.Evaluation` provides it)."""

    model: nn.Module
    defense: Any  # a `defenses.base.Defense`
    data: Any  # the datamodule whose test split is evaluated

    def plan(self, predictor: nn.Module, probe: torch.Tensor) -> None: ...

    def loaders(self, rank: int, world_size: int, device: torch.device) -> list: ...

    def pass_name(self, dataloader_idx: int) -> str: ...

    def start(self) -> None: ...

    def step(self, batch: Any, batch_idx: int, name: str, batches: int) -> None: ...

    def finish(self) -> None: ...


class ShardedEvaluation(pl.LightningModule):
    """Under DDP, Lightning's test loop over the evaluation's passes: it starts the processes (or joins those
    training started), and each process's hooks hand its share of the batches to `Evaluation.step`."""

    def __init__(self, evaluation: Steps) -> None:
        super().__init__()
        self.model, self.defense = evaluation.model, evaluation.defense  # moved to this process's device
        self.evaluation = evaluation
        self.allow_zero_length_dataloader_with_multiple_devices = True  # a short pass may leave a process none

    def test_dataloader(self) -> list:
        evaluation, trainer = self.evaluation, self.trainer
        evaluation.plan(evaluation.defense.wrap(evaluation.model),
                        evaluation.data.split("test").tensors[0][:8].to(trainer.strategy.root_device))
        self.loaders = evaluation.loaders(trainer.global_rank, trainer.world_size, trainer.strategy.root_device)
        return self.loaders

    def on_test_epoch_start(self) -> None:
        self.evaluation.start()

    def test_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        name = self.evaluation.pass_name(dataloader_idx)
        self.evaluation.step(batch, batch_idx, name, len(self.loaders[dataloader_idx]))

    def on_test_epoch_end(self) -> None:
        self.evaluation.finish()
