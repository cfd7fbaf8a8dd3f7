"""The one LightningModule: trains any model under any defense and evaluates it against every attack."""

from __future__ import annotations

import copy
import random
import time
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn

from robustlab.attacks.expectation import expected_correct, is_randomized, weighted_members
from robustlab.defenses.base import Defense, evaluation_mode
from robustlab.errors import TrainingDiverged
from robustlab.evaluation.images import adversarial_grid
from robustlab.provenance import provenance

CLEAN = "clean"
NAN_CHECK_EVERY = 50  # on a GPU, training steps between two reads of the non-finite-loss flag
WITHOUT_EOT = "/without_eot"
WORST_CASE = "worst_case"


def random_states() -> dict:
    name, keys, position, has_gauss, cached = np.random.get_state()
    # Plain types and tensors only, so checkpoints load with torch.load(weights_only=True).
    states = {"python": random.getstate(), "numpy": (name, torch.from_numpy(keys.astype(np.int64)), position,
                                                     has_gauss, cached), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_random_states(states: dict) -> None:
    random.setstate(states["python"])
    name, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class RobustClassifier(pl.LightningModule):
    """`training_step` asks the defense for its loss; `test_step` attacks the deployed predictor.

    Test pass 0 is clean accuracy on the whole test split; pass k ≥ 1 runs the k-th attack of `attacks`
    on the first `n_eval` test images (see `test_loaders`). Attacks always see `defense.wrap(model)`.
    """

    def __init__(
        self,
        model: nn.Module,
        defense: Defense,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        attacks: Mapping[str, Callable] | None = None,
        val_attack: Callable | None = None,
        n_eval: int = 1000,
        image_grid: int = 8,
        accuracy_draws: int = 10,
        compare_without_eot: bool = True,
        build_config: dict | None = None,
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__()
        if channels_last:  # NHWC convolutions: faster on CPUs (oneDNN) and on GPUs' tensor cores
            model = model.to(memory_format=torch.channels_last)
            defense = defense.to(memory_format=torch.channels_last)
        if compile:  # in place, so state_dict keys (and checkpoints) are unchanged
            model.compile()
        self.model = model
        self.defense = defense
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.attacks = dict(attacks or {})
        self.val_attack = val_attack
        self.n_eval = n_eval
        self.image_grid = image_grid
        self.accuracy_draws = accuracy_draws
        self.compare_without_eot = compare_without_eot
        self.build_config = build_config
        self.randomized = False
        self.test_passes: dict[str, Callable] = dict(self.attacks)
        self.allow_zero_length_dataloader_with_multiple_devices = True  # DDP: a short pass may leave a process none
        self.test_data = None  # the datamodule whose test split `test_dataloader` serves (set by the evaluation)
        self.attack_seconds: dict[str, float] = {}
        self.defense_metrics: dict[str, dict[str, list[float]]] = {}
        self.results: dict[str, Any] | None = None
        self.nonfinite_steps: torch.Tensor | None = None  # non-finite losses since the check was last read
        self.nan_check_every = NAN_CHECK_EVERY

    # -- deployment -------------------------------------------------------------------------------
    def predictor(self) -> nn.Module:
        """What is deployed and attacked: the model behind the defense's wrapper."""
        return self.defense.wrap(self.model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictor()(x)

    def draws(self) -> int:
        """Forward passes that accuracy is averaged over: several for a randomized predictor, never one lucky draw."""
        return self.accuracy_draws if self.randomized else 1

    def plan_evaluation(self, probe: torch.Tensor) -> None:
        """Detect whether the deployed predictor is randomized (on a few test images) and fix the test passes.

        A randomized predictor's accuracy is averaged over `accuracy_draws` draws (exact for a mixture), and
        its attacks use EOT unless their config says otherwise. With `compare_without_eot`, every attack that
        would use EOT runs a second time with one draw per gradient: that number is reported apart, as
        `robust_acc_without_eot`, never as the robust accuracy.
        """
        predictor = self.predictor()
        with evaluation_mode(predictor):
            self.randomized = is_randomized(predictor, probe.to(self.device))
        self.test_passes = dict(self.attacks)
        if self.randomized and self.compare_without_eot and weighted_members(predictor) is None:  # mixtures: exact
            for name, attack in self.attacks.items():
                if getattr(attack, "eot_samples", 1) is None:  # chosen automatically, so EOT on this predictor
                    single_draw = copy.copy(attack)
                    single_draw.eot_samples = 1
                    self.test_passes[name + WITHOUT_EOT] = single_draw

    # -- training ---------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss, logits = self.defense.training_loss(self.model, x, y)
        self._check_finite(loss, batch_idx)
        self._log_mean("train/loss", loss.detach(), len(y), prog_bar=False)
        self._log_mean("train/acc", (logits.argmax(1) == y).float().mean(), len(y))
        self.log("loss", loss, on_step=True, on_epoch=False, prog_bar=True, logger=False)  # the bar's running loss
        return loss

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
            lr = self.optimizers().param_groups[0]["lr"]
            raise TrainingDiverged(f"train/loss is {value} at epoch {self.current_epoch}, {where}: training "
                                   f"diverged (optimizer learning rate {lr:g}; try a lower optimizer.lr). "
                                   "No metrics were written.")

    def on_train_epoch_start(self) -> None:
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=False, on_epoch=True)

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        predictor = self.predictor()
        if batch_idx == 0:
            self.randomized = is_randomized(predictor, x)
        logits = predictor(x)
        self._log_mean("val/loss", nn.functional.cross_entropy(logits, y), len(y), prog_bar=False)
        self._log_mean("val/acc", expected_correct(predictor, x, y, self.draws()).mean(), len(y))
        if batch_idx == 0 and self.val_attack is not None:
            # The same fixed batch every epoch: a cheap early warning of catastrophic overfitting.
            with torch.enable_grad():
                x_adv = self.val_attack(predictor, x, y)
            self._log_mean("val/robust_acc", expected_correct(predictor, x_adv, y, self.draws()).mean(), len(y))

    def configure_optimizers(self):
        parameters = [p for p in self.defense.trainable_parameters(self.model) if p.requires_grad]
        optimizer = self.optimizer_factory(params=parameters)
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer),
                                                          "interval": "epoch"}}

    # -- evaluation -------------------------------------------------------------------------------
    def test_pass_name(self, dataloader_idx: int) -> str:
        return CLEAN if dataloader_idx == 0 else list(self.test_passes)[dataloader_idx - 1]

    def test_dataloader(self) -> list:
        """Loaders in pass order: the whole test split, then the first `n_eval` images once per attack pass.

        Requested by the Trainer once its processes exist, so under DDP each process gets its share of the
        batches (`InMemoryImageDataModule.test_dataloader(indexed=True)`), and the split lives on its device.
        """
        self.test_data.trainer = self.trainer
        limit = None if self.n_eval == -1 else self.n_eval
        return [self.test_data.test_dataloader(indexed=True)] + \
            [self.test_data.test_dataloader(limit, indexed=True) for _ in self.test_passes]

    def on_test_epoch_start(self) -> None:
        self.attack_seconds = {name: 0.0 for name in self.test_passes}
        self.per_example: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {
            name: [] for name in [CLEAN, *self.test_passes]}
        self.defense_metrics = {}
        self.results = None
        self.evaluation_seed = torch.initial_seed()  # the run's seed (pl.seed_everything), the same in every process

    def test_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if torch.is_inference_mode_enabled():
            raise RuntimeError("attacks need gradients: build the Trainer with inference_mode=False "
                               "(trainer.inference_mode=false)")
        x, y, index = batch
        name = self.test_pass_name(dataloader_idx)
        # The randomness of a batch (random starts, EOT and accuracy draws) depends on the run's seed, the pass
        # and the batch's first image only: the same numbers on one device or sharded over several processes.
        torch.manual_seed(zlib.crc32(f"{self.evaluation_seed}/{name}/{int(index[0])}".encode()))
        predictor = self.predictor()
        x_eval = x
        if name != CLEAN:
            started = time.perf_counter()
            with torch.enable_grad():
                x_eval = self.test_passes[name](predictor, x, y)
            if x.is_cuda:
                torch.cuda.synchronize(x.device)
            self.attack_seconds[name] += time.perf_counter() - started
            for key, values in self.defense.test_metrics(self.model, x, x_eval).items():
                self.defense_metrics.setdefault(name, {}).setdefault(key, []).extend(values.tolist())
        correct = expected_correct(predictor, x_eval, y, self.draws())
        self.per_example[name].append((index, correct.cpu()))
        if batch_idx == 0 and name != CLEAN and self.image_grid > 0:
            self._log_images(name, x, x_eval)

    def _gathered(self) -> tuple[dict[str, torch.Tensor], dict[str, float], dict[str, list[float]]]:
        """Per-image correctness in test-split order, attack seconds and defense metrics of all processes."""
        local = ({name: (torch.cat([i for i, _ in parts]) if parts else torch.zeros(0, dtype=torch.long),
                         torch.cat([c for _, c in parts]) if parts else torch.zeros(0))
                  for name, parts in self.per_example.items()}, self.attack_seconds, self.defense_metrics)
        shares = [local]
        if torch.distributed.is_available() and torch.distributed.is_initialized() and self.trainer.world_size > 1:
            shares = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(shares, local)
        per_example = {}
        for name in local[0]:
            indices = torch.cat([share[0][name][0] for share in shares])
            values = torch.cat([share[0][name][1] for share in shares])
            per_example[name] = values[indices.argsort()]
        seconds = {name: sum(share[1][name] for share in shares) for name in self.attack_seconds}
        defense_metrics: dict[str, dict[str, list[float]]] = {}
        for share in shares:
            for name, metrics in share[2].items():
                for key, values in metrics.items():
                    defense_metrics.setdefault(name, {}).setdefault(key, []).extend(values)
        return per_example, seconds, defense_metrics

    def on_test_epoch_end(self) -> None:
        per_example, seconds, gathered_metrics = self._gathered()
        accuracy = {name: float(values.double().mean()) if len(values) else 0.0 for name, values in per_example.items()}
        counts = {name: len(values) for name, values in per_example.items()}
        defense_metrics = {name: {key: sum(values) / len(values) for key, values in metrics.items()}
                           for name, metrics in gathered_metrics.items()}
        if self.attacks:
            # Per example, robust only if robust to every attack (and classified right to begin with): the
            # worst case over the suite, at most each attack's accuracy on every single image.
            columns = [per_example[name] for name in self.attacks]
            n = min(len(column) for column in columns)
            worst = torch.stack([per_example[CLEAN][:n], *(column[:n] for column in columns)]).min(dim=0).values
            per_example[WORST_CASE] = worst
            accuracy[WORST_CASE], counts[WORST_CASE] = float(worst.double().mean()) if n else 0.0, n
        self.results = {
            "clean_acc": accuracy[CLEAN],
            "n_clean": counts[CLEAN],
            "robust_acc": {name: accuracy[name] for name in [*self.attacks, *([WORST_CASE] if self.attacks else [])]},
            "robust_acc_without_eot": {name.removesuffix(WITHOUT_EOT): accuracy[name] for name in self.test_passes
                                       if name.endswith(WITHOUT_EOT)},
            "n_eval": {name: counts[name] for name in self.attacks},
            "attack_ms_per_image": {name: 1000.0 * seconds[name] / max(counts[name], 1) for name in self.attacks},
            "randomized": self.randomized,
            # Draws that accuracy was averaged over; "exact" for a mixture (Σ α_k·acc_k, no sampling at all).
            "accuracy_draws": "exact" if weighted_members(self.predictor()) is not None else self.draws(),
            "defense_metrics": defense_metrics,
            "per_example": per_example,  # correctness per evaluated image, for the audit (not written to disk)
        }
        # TensorBoard gets these numbers once, at the last training step, from the run's record
        # (robustlab/evaluation/tensorboard.py), not here: a test stage logs at step 0, before the curves.

    def _log_images(self, name: str, x: torch.Tensor, x_adv: torch.Tensor) -> None:
        experiment = getattr(self.logger, "experiment", None)
        if hasattr(experiment, "add_image"):
            experiment.add_image(f"adversarial_examples/{name}", adversarial_grid(x, x_adv, self.image_grid),
                                 self.global_step)

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
