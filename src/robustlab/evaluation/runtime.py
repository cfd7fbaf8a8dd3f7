"""Where an evaluation runs: its device and precision, the loggers its figures go to, whether bars are drawn,
and which share of the test split this process takes.

A single process needs nothing more: the evaluation loops over its batches itself (`Evaluation.run`). Only
under DDP does a run hold Lightning's Trainer (`trainer`): Lightning starts and joins the processes, and
rank, world size, device and precision are then the Trainer's.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch

# Lightning's precision settings that are an autocast around the forward pass (or nothing), by their names
# and their older aliases; the others (true half precision) convert the module, as only Lightning does.
AUTOCAST = {"32-true": None, "32": None, 32: None, "bf16-mixed": torch.bfloat16, "bf16": torch.bfloat16,
            "16-mixed": torch.float16, "16": torch.float16, 16: torch.float16}
CANONICAL = {"32": "32-true", 32: "32-true", "bf16": "bf16-mixed", "16": "16-mixed", 16: "16-mixed"}


class Runtime:
    """A single process on `device` (the default: the CPU, full precision, no loggers), or, with `trainer`,
    this process of a DDP run."""

    def __init__(self, device: torch.device | str = "cpu", precision: str | int = "32-true", loggers=(),
                 progress: bool = True, trainer: Any = None) -> None:
        self.trainer = trainer
        self.progress = progress  # draw a bar per evaluation pass (in process 0)
        self._device, self._loggers = torch.device(device), list(loggers)
        self._precision = CANONICAL.get(precision, str(precision))

    @property
    def device(self) -> torch.device:
        return self.trainer.strategy.root_device if self.trainer is not None else self._device

    @property
    def precision(self) -> str:
        return str(self.trainer.precision) if self.trainer is not None else self._precision

    @property
    def loggers(self) -> list:
        return list(self.trainer.loggers) if self.trainer is not None else self._loggers

    @property
    def rank(self) -> int:
        return self.trainer.global_rank if self.trainer is not None else 0

    @property
    def world_size(self) -> int:
        return self.trainer.world_size if self.trainer is not None else 1

    def autocast(self):
        """The forward passes' precision: bf16 autocast for `bf16-mixed` (on a GPU), nothing for `32-true`."""
        if self.trainer is not None:
            return self.trainer.precision_plugin.forward_context()
        dtype = AUTOCAST[self._precision]
        return nullcontext() if dtype is None else torch.autocast(self._device.type, dtype=dtype)

    def close(self) -> None:
        """Flush the loggers' files (a Trainer's own are finalized by Lightning)."""
        if self.trainer is None:
            for logger in self._loggers:
                logger.finalize("success")
