"""`python train.py`: train under a defense, evaluate against every attack, write metrics.json."""

from __future__ import annotations

import time

import pytorch_lightning as pl
from omegaconf import DictConfig

from robustlab.evaluation.runner import evaluate, record_run
from robustlab.experiment import build_classifier, build_datamodule, build_trainer, choices


def run(cfg: DictConfig) -> dict:
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg.dataset)
    classifier = build_classifier(cfg)
    trainer = build_trainer(cfg)
    started = time.perf_counter()
    trainer.fit(classifier, datamodule=datamodule)
    train_seconds = time.perf_counter() - started
    checkpoint = trainer.checkpoint_callback.best_model_path or trainer.checkpoint_callback.last_model_path or None
    results = evaluate(trainer, classifier, datamodule, checkpoint)
    record_run(cfg, trainer, results, checkpoint, choices(), train_seconds, trainer.current_epoch)
    return results
