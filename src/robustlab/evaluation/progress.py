"""Progress bars: Lightning's for training and validation, and one per evaluation pass, named by its attack."""

from __future__ import annotations

import sys
import time

from pytorch_lightning.callbacks import TQDMProgressBar
from tqdm.auto import tqdm

GPU_REFRESH_RATE = 20  # batches between redraws on a GPU: each redraw reads the bar's numbers back to the host
REDRAW_SECONDS = {True: 0.5, False: 30.0}  # between two redraws, on a terminal / into a log file


class ProgressBar(TQDMProgressBar):
    """Lightning's bar for training and validation. `refresh_rate=None` redraws every batch on a terminal and
    every 50 batches in a log file; on a GPU at most every `GPU_REFRESH_RATE` batches, since reading the shown
    loss makes the host wait for the device. The evaluation passes draw their own bars (`PassBar`), under DDP
    too, so this one draws none for Lightning's test loop."""

    def __init__(self, refresh_rate: int | None = None, **kwargs) -> None:
        self.automatic = refresh_rate is None
        if refresh_rate is None:
            refresh_rate = 1 if sys.stderr.isatty() else 50
        super().__init__(refresh_rate=refresh_rate, **kwargs)

    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self.automatic and trainer.strategy.root_device.type == "cuda":
            self._refresh_rate = max(self._refresh_rate, GPU_REFRESH_RATE)

    def on_test_start(self, *args, **kwargs) -> None:
        pass

    def on_test_batch_start(self, *args, **kwargs) -> None:
        pass

    def on_test_batch_end(self, *args, **kwargs) -> None:
        pass

    def on_test_end(self, *args, **kwargs) -> None:
        pass


class PassBar:
    """'Evaluating <attack>' over a pass's batches, with the pass's running accuracy; during an attack it
    advances with the attack's steps (`Attack.progress`). Redrawn at most every half second on a terminal and
    every 30 s in a log file, and once at the pass's end."""

    def __init__(self, name: str, batches: int, enabled: bool = True) -> None:
        terminal = sys.stderr.isatty()
        self.bar = tqdm(total=batches, desc=f"Evaluating {name}", disable=not enabled, file=sys.stderr,
                        dynamic_ncols=True, mininterval=REDRAW_SECONDS[terminal], leave=True)
        self.redraw_seconds, self.last_redraw = REDRAW_SECONDS[terminal], 0.0

    def attack_progress(self, batch_idx: int, fraction: float) -> None:
        """Show `fraction` of batch `batch_idx`'s attack as done."""
        now = time.monotonic()
        if self.bar.disable or now - self.last_redraw < self.redraw_seconds:
            return
        self.last_redraw = now
        self.bar.n = batch_idx + min(fraction, 1.0)
        self.bar.refresh()

    def batch_done(self, batch_idx: int, accuracy: float | None) -> None:
        if self.bar.disable:
            return
        if accuracy is not None:
            self.bar.set_postfix_str(f"accuracy {100 * accuracy:.1f}%", refresh=False)
        self.bar.n = batch_idx  # after a fractional attack position
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
