"""Lightning's progress bar, with each evaluation pass named by its attack."""

from __future__ import annotations

import sys

from pytorch_lightning.callbacks import TQDMProgressBar


GPU_REFRESH_RATE = 20  # batches between redraws on a GPU: each redraw reads the bar's numbers back to the host


class EvaluationProgressBar(TQDMProgressBar):
    """One bar per evaluation pass, labelled 'Evaluating <attack>' instead of 'DataLoader <i>'.

    `refresh_rate=None` redraws every batch on a terminal and every 50 batches in a log file; on a GPU at
    most every `GPU_REFRESH_RATE` batches, since reading the shown loss makes the host wait for the device.
    """

    def __init__(self, refresh_rate: int | None = None, **kwargs) -> None:
        self.automatic = refresh_rate is None
        if refresh_rate is None:
            refresh_rate = 1 if sys.stderr.isatty() else 50
        super().__init__(refresh_rate=refresh_rate, **kwargs)

    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self.automatic and trainer.strategy.root_device.type == "cuda":
            self._refresh_rate = max(self._refresh_rate, GPU_REFRESH_RATE)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        super().on_test_batch_start(trainer, pl_module, batch, batch_idx, dataloader_idx)
        if batch_idx == 0 and pl_module.evaluation is not None:
            self.test_progress_bar.set_description(f"Evaluating {pl_module.evaluation.pass_name(dataloader_idx)}")
