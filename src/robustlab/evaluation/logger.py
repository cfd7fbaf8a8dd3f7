"""The TensorBoard logger of `logger=tensorboard` (conf/logger/tensorboard.yaml): Lightning's, with its tags
grouped as `evaluation/tensorboard.py` lays them out."""

from __future__ import annotations

from collections.abc import Mapping

from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_only


class Logger(TensorBoardLogger):
    """Lightning's TensorBoard logger, with the `epoch` it adds to every log call among the training curves."""

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        super().log_metrics({"train/epoch" if name == "epoch" else name: value for name, value in metrics.items()},
                            step)
