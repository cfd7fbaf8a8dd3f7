"""The evaluation under DDP: Lightning's test loop over the engine's passes, only to start and join the processes."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytorch_lightning as pl

if TYPE_CHECKING:
    from robustlab.evaluation.engine import Evaluation


class ShardedEvaluation(pl.LightningModule):
    """Under DDP, Lightning's test loop over the evaluation's passes: it starts the processes (or joins those
    training started), and each process's hooks hand its share of the batches to `Evaluation.step`."""

    def __init__(self, evaluation: Evaluation) -> None:
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
