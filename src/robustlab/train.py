"""`python train.py`: train under a defense (or resume, or reuse), evaluate against every attack, write metrics.json."""

from __future__ import annotations

import pytorch_lightning as pl
from omegaconf import DictConfig

from robustlab.distributed import job_processes
from robustlab.files import locked
from robustlab.evaluation.runner import audit_run, evaluate, finished_run, record_run
from robustlab.experiment import build_classifier, build_datamodule, build_trainer, choices
from robustlab.fingerprint import run_fingerprint
from robustlab.trained_models import fit_or_reuse
from robustlab.validation import check_config


def run(cfg: DictConfig) -> dict:
    check_config(cfg)
    # The same command started twice at once: the second waits here, then finds the run finished. DDP: this
    # job's processes, closed when it ends.
    with locked(cfg.paths.output_dir), job_processes():
        done = finished_run(cfg.paths.output_dir, run_fingerprint(cfg))
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
