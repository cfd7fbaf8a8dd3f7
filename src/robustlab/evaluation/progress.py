"""Lightning's progress bar, with each evaluation pass named by its attack, moving during the attack."""

from __future__ import annotations

import sys
import time

from pytorch_lightning.callbacks import TQDMProgressBar


GPU_REFRESH_RATE = 20  # batches between redraws on a GPU: each redraw reads the bar's numbers back to the host
ATTACK_REDRAW_SECONDS = {True: 0.5, False: 30.0}  # during an attack, on a terminal / into a log file


class EvaluationProgressBar(TQDMProgressBar):
    """One bar per evaluation pass, labelled 'Evaluating <attack>' instead of 'DataLoader <i>', with the pass's
    running accuracy; during an attack it advances with the attack's steps (`Attack.progress`), at most every
    half second on a terminal and every 30 s in a log file.

    `refresh_rate=None` redraws every batch on a terminal and every 50 batches in a log file; on a GPU at
    most every `GPU_REFRESH_RATE` batches, since reading the shown loss makes the host wait for the device.
    """

    def __init__(self, refresh_rate: int | None = None, **kwargs) -> None:
        self.automatic = refresh_rate is None
        if refresh_rate is None:
            refresh_rate = 1 if sys.stderr.isatty() else 50
        super().__init__(refresh_rate=refresh_rate, **kwargs)
        self.last_redraw = 0.0

    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self.automatic and trainer.strategy.root_device.type == "cuda":
            self._refresh_rate = max(self._refresh_rate, GPU_REFRESH_RATE)
        self.last_redraw = 0.0

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        super().on_test_batch_start(trainer, pl_module, batch, batch_idx, dataloader_idx)
        if batch_idx == 0 and pl_module.evaluation is not None:
            self.test_progress_bar.set_description(f"Evaluating {pl_module.evaluation.pass_name(dataloader_idx)}")
            self.test_progress_bar.set_postfix_str("", refresh=False)

    def attack_progress(self, batch_idx: int, fraction: float) -> None:
        """Show `fraction` of batch `batch_idx`'s attack as done."""
        now = time.monotonic()
        if self.is_disabled or now - self.last_redraw < ATTACK_REDRAW_SECONDS[sys.stderr.isatty()]:
            return
        self.last_redraw = now
        bar = self.test_progress_bar
        bar.n = batch_idx + min(fraction, 1.0)
        bar.refresh()

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        evaluation = pl_module.evaluation
        accuracy = None if evaluation is None else evaluation.running_accuracy(evaluation.pass_name(dataloader_idx))
        if accuracy is not None and not self.is_disabled:
            self.test_progress_bar.set_postfix_str(f"accuracy {100 * accuracy:.1f}%", refresh=False)
        super().on_test_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
