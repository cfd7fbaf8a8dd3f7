"""Write the report when a Hydra multirun ends (`hydra.callbacks.report` in conf/sweep/matrix.yaml)."""

from __future__ import annotations

import logging
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from robustlab.report.writing import write_report

log = logging.getLogger(__name__)


class ReportCallback(Callback):
    """`versions`: `current` (default) reports the results evaluated by the code that ran the sweep and lists
    older ones in the sweep directory as left out; `refuse` stops on a mix; `mix` reports everything."""

    def __init__(self, versions: str = "current") -> None:
        self.versions = versions

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        written = write_report(config.hydra.sweep.dir, versions=self.versions)
        log.info(f"report: {written['markdown']}")
