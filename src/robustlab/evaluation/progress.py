"""Lightning's progress bar, with each evaluation pass named by its attack."""

from __future__ import annotations

import sys

from pytorch_lightning.callbacks import TQDMProgressBar


class EvaluationProgressBar(TQDMProgressBar):
    """One bar per evaluation pass, labelled 'Evaluating <attack>' instead of 'DataLoader <i>'.

    `refresh_rate=None` redraws every batch on a terminal and every 50 batches in a log file.
    """

    def __init__(self, refresh_rate: int | None = None, **kwargs) -> None:
        if refresh_rate is None:
            refresh_rate = 1 if sys.stderr.isatty() else 50
        super().__init__(refresh_rate=refresh_rate, **kwargs)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        super().on_test_batch_start(trainer, pl_module, batch, batch_idx, dataloader_idx)
        if batch_idx == 0 and hasattr(pl_module, "test_pass_name"):
            self.test_progress_bar.set_description(f"Evaluating {pl_module.test_pass_name(dataloader_idx)}")
