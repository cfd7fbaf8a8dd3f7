"""Write the report when a Hydra multirun ends (`hydra.callbacks.report` in conf/sweep/matrix.yaml)."""

from __future__ import annotations

from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from robustlab.report.matrix import write_report


class ReportCallback(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        written = write_report(config.hydra.sweep.dir)
        print(f"report: {written['markdown']}", flush=True)
