"""The one LightningModule: trains any model under any defense (the evaluation takes its model and defense:
`robustlab.evaluation.engine`)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from robustlab.attacks.expectation import draws_for, expected_correct, is_randomized
from robustlab.defenses.base import Defense
from robustlab.errors import TrainingDiverged
from robustlab.provenance import provenance
from robustlab.randomness import random_states, restore_random_states

log = logging.getLogger(__name__)
NAN_CHECK_EVERY = 50  # on a GPU, training steps between two reads of the non-finite-loss flag


class RobustClassifier(pl.LightningModule):
    """`training_step` asks the defense for its loss; validation measures the deployed predictor.

    Attacks and the evaluation always see `defense.wrap(model)` (`predictor()`).
    `optimizer` is None for a classifier loaded for evaluation or deployment.
    """

    def __init__(
        self,
        model: nn.Module,
        defense: Defense,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        val_attack: Callable | None = None,
        accuracy_draws: int = 10,
        build_config: dict | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.defense = defense
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.val_attack = val_attack
        self.accuracy_draws = accuracy_draws
        self.build_config = build_config
        self.randomized = False
        self.nonfinite_steps: torch.Tensor | None = None  # non-finite losses since the check was last read
        self.train_sums: torch.Tensor | None = None  # this epoch's summed loss and correct predictions
        self.train_images = 0
        self.nan_check_every = NAN_CHECK_EVERY

    # -- deployment -------------------------------------------------------------------------------
    def predictor(self) -> nn.Module:
        """What is deployed and attacked: the model behind the defense's wrapper."""
        return self.defense.wrap(self.model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictor()(x)

    def draws(self) -> int:
        """Forward passes that validation accuracy is averaged over (`expectation.draws_for`)."""
        return draws_for(self.randomized, self.accuracy_draws)

    # -- training ---------------------------------------------------------------------------------
    @property
    def automatic_optimization(self) -> bool:
        """Lightning's automatic optimization only where its gradient clipping or accumulation is asked for.

        Otherwise `training_step` steps the optimizer itself: the automatic loop's closure and hooks cost about
        half a millisecond per step, a tenth of a small model's adversarial-training step (the same weights;
        `tests/test_trainers.py`)."""
        trainer = self._trainer
        return trainer is not None and bool(trainer.gradient_clip_val or trainer.accumulate_grad_batches != 1)

    @automatic_optimization.setter
    def automatic_optimization(self, value: bool) -> None:  # LightningModule.__init__ assigns it
        pass

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss, logits = self.defense.training_loss(self.model, x, y)
        self._check_finite(loss, batch_idx)
        if not self.automatic_optimization:
            optimizer = self.optimizer()
            optimizer.zero_grad()
            self.manual_backward(loss)
            optimizer.step()
        # Summed on the device: Lightning's `self.log` costs about a millisecond per call, more than a small
        # model's whole step, so the epoch means are logged once, at the epoch's end.
        value = loss.detach()
        sums = torch.stack([value * len(y), (logits.detach().argmax(1) == y).sum()])
        self.train_sums = sums if self.train_sums is None else self.train_sums.add_(sums)
        self.train_images += len(y)
        # The bar's running loss, at the logging cadence.
        if batch_idx % int(getattr(self.trainer, "log_every_n_steps", 50)) == 0:
            self.log("loss", value, on_step=True, on_epoch=False, prog_bar=True, logger=False)
        return loss

    def on_train_epoch_end(self) -> None:
        """`train/loss` and `train/acc`: the epoch's means over every image, across DDP processes; the
        scheduler's epoch step where this module steps the optimizer itself."""
        if not self.automatic_optimization:
            scheduler = self.lr_schedulers()
            if isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler):
                scheduler.step()
        if self.train_sums is None:
            return
        sums = torch.cat([self.train_sums, torch.tensor([float(self.train_images)], device=self.train_sums.device)])
        loss_sum, correct, count = self.trainer.strategy.reduce(sums, reduce_op="sum")
        self.train_sums, self.train_images = None, 0
        self.log("train/loss", loss_sum / count, on_step=False, on_epoch=True, prog_bar=False)
        self.log("train/acc", correct / count, on_step=False, on_epoch=True, prog_bar=True)

    def _log_mean(self, name: str, value: torch.Tensor, count: int, prog_bar: bool = True) -> None:
        """An epoch mean weighted by batch size, reduced over DDP processes once, at the epoch's end (an
        epoch-only value is synchronised then, never per step)."""
        self.log(name, value, on_step=False, on_epoch=True, prog_bar=prog_bar, batch_size=count, sync_dist=True)

    def _check_finite(self, loss: torch.Tensor, batch_idx: int) -> None:
        """Stop on a non-finite loss. Reading the check makes the host wait for the device, so on a GPU the
        steps are counted on the device and the count is read every `nan_check_every` steps and at the epoch's
        last step, before any checkpoint is saved; on the CPU every step is read, before its optimizer step."""
        nonfinite = (~torch.isfinite(loss.detach())).int()
        self.nonfinite_steps = nonfinite if self.nonfinite_steps is None else self.nonfinite_steps + nonfinite
        every = self.nan_check_every if loss.device.type == "cuda" else 1
        if (batch_idx + 1) % every and batch_idx + 1 != self.trainer.num_training_batches:
            return
        count, self.nonfinite_steps = int(self.nonfinite_steps), None
        if count:
            where = f"batch {batch_idx}" if every == 1 else f"{count} of the batches up to {batch_idx}"
            value = loss.item() if every == 1 else "nan or inf"
            lr = self.optimizer().param_groups[0]["lr"]
            raise TrainingDiverged(f"train/loss is {value} at epoch {self.current_epoch}, {where}: training "
                                   f"diverged (optimizer learning rate {lr:g}; try a lower optimizer.lr). "
                                   "No metrics were written.")

    def on_train_epoch_start(self) -> None:
        self.log("train/lr", self.optimizer().param_groups[0]["lr"], on_step=False, on_epoch=True)

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        predictor = self.predictor()
        if batch_idx == 0:
            self.randomized = is_randomized(predictor, x)
        logits = predictor(x)
        self._log_mean("val/loss", nn.functional.cross_entropy(logits, y), len(y), prog_bar=False)
        # A voting predictor (randomized smoothing) is validated on single noisy passes, as Cohen et al. monitor
        # its base classifier: a vote per validation image would cost `votes` passes each, every epoch.
        self._log_mean("val/acc", expected_correct(predictor, x, y, self.draws(), by_vote=False).mean(), len(y))
        if batch_idx == 0 and self.val_attack is not None:
            # The same fixed batch every epoch: a cheap early warning of catastrophic overfitting.
            with torch.enable_grad():
                x_adv = self.val_attack(predictor, x, y)
            self._log_mean("val/robust_acc", expected_correct(predictor, x_adv, y, self.draws(), by_vote=False).mean(),
                           len(y))

    def optimizer(self) -> torch.optim.Optimizer:
        """The one optimizer `configure_optimizers` built (Lightning's wrapper around it)."""
        optimizer = self.optimizers()
        if isinstance(optimizer, list):
            raise RuntimeError("RobustClassifier trains with exactly one optimizer")
        return optimizer  # type: ignore[return-value]

    def configure_optimizers(self):
        if self.optimizer_factory is None:
            raise RuntimeError("this classifier was loaded for evaluation: it has no optimizer to train with")
        parameters = [p for p in self.defense.trainable_parameters(self.model) if p.requires_grad]
        optimizer = self.optimizer_factory(params=parameters)
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer),
                                                          "interval": "epoch"}}

    # -- checkpoints ------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["robustlab"] = self.build_config
        checkpoint["rng_states"] = random_states()
        checkpoint["provenance"] = provenance(self.device, self.trainer.precision)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Resuming a fit continues the random stream where it stopped (shuffling, random starts), so a killed
        # and resumed run ends exactly like an uninterrupted one. Evaluation does not restore it.
        if self._trainer is not None and self.trainer.state.fn == "fit" and "rng_states" in checkpoint:
            restore_random_states(checkpoint["rng_states"])
