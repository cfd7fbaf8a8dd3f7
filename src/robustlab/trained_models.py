"""Train once per training fingerprint: resume a killed training, reuse a finished one.

`paths.checkpoint_dir` is keyed by the training fingerprint. In it, `last.ckpt` (written every epoch, with
optimizer, scheduler, loop and RNG state) lets the same command continue a killed run exactly where its
last epoch ended, and `trained.json` (written atomically once `fit` returns) marks training as finished, so
sweeping attacks or budgets over a trained defense never retrains it. A file lock makes this safe when a
parallel launcher starts two runs that share a training.
"""

from __future__ import annotations

import fcntl
import json
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import pytorch_lightning as pl

from robustlab.classifier import RobustClassifier
from robustlab.fingerprint import training_fingerprint

MARKER = "trained.json"


@dataclass
class Training:
    fingerprint: str
    checkpoint: str  # the checkpoint to evaluate: best by the defense's selection metric
    train_seconds: float
    epochs: int
    resumed_from: str | None = None
    reused: bool = False


@contextmanager
def locked(directory: Path):
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def finished_training(directory: Path, fingerprint: str) -> Training | None:
    marker = directory / MARKER
    if not marker.is_file():
        return None
    record = json.loads(marker.read_text())
    if record.get("fingerprint") != fingerprint or not Path(record["checkpoint"]).is_file():
        return None
    return Training(**{**record, "reused": True})


def fit_or_reuse(cfg, trainer: pl.Trainer, classifier: RobustClassifier, datamodule) -> Training:
    directory = Path(cfg.paths.checkpoint_dir)
    fingerprint = training_fingerprint(cfg)
    with locked(directory):
        done = finished_training(directory, fingerprint)
        if done is not None:
            print(f"training: reusing {done.checkpoint} (fingerprint {fingerprint})", flush=True)
            return done
        last = directory / "last.ckpt"
        resume = str(last) if last.is_file() else None
        if resume:
            print(f"training: resuming from {resume}", flush=True)
        started = time.perf_counter()
        trainer.fit(classifier, datamodule=datamodule, ckpt_path=resume)
        callback = trainer.checkpoint_callback
        training = Training(fingerprint=fingerprint,
                            checkpoint=callback.best_model_path or callback.last_model_path,
                            train_seconds=time.perf_counter() - started, epochs=trainer.current_epoch,
                            resumed_from=resume)
        partial = directory / f"{MARKER}.partial"
        partial.write_text(json.dumps(asdict(training), indent=2) + "\n")
        partial.replace(directory / MARKER)
        return training
