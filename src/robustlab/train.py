"""`python train.py`: train under a defense (or resume, or reuse), evaluate against every attack, write metrics.json."""

from __future__ import annotations

import pytorch_lightning as pl
from omegaconf import DictConfig

from robustlab.evaluation.runner import audit_run, evaluate, record_run, run_directory
from robustlab.experiment import build_classifier, build_datamodule, build_trainer, choices
from robustlab.trained_models import fit_or_reuse
from robustlab.validation import check_config


def run(cfg: DictConfig) -> dict:
    check_config(cfg)
    with run_directory(cfg) as done:
        if done is not None:
            return done
        pl.seed_everything(cfg.seed, workers=True)
        datamodule = build_datamodule(cfg.dataset)
        classifier = build_classifier(cfg)
        training = fit_or_reuse(cfg, classifier, datamodule)
        pl.seed_everything(cfg.seed, workers=True)  # the evaluation's randomness does not depend on how training went
        trainer = build_trainer(cfg)
        results = evaluate(trainer, classifier, datamodule, training.checkpoint)
        if not trainer.is_global_zero:  # DDP: every process evaluated its share; process 0 audits and writes
            return results
        audit_run(cfg, trainer, classifier, datamodule, results)
        record_run(cfg, trainer, results, training.checkpoint, choices(), training, steps=training.steps)
        return results
