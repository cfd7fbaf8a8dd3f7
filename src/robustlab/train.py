"""`python train.py`: train under a defense (or resume, or reuse), evaluate against every attack, write metrics.json."""

from __future__ import annotations

import pytorch_lightning as pl
from omegaconf import DictConfig

from robustlab.builders import build_classifier, build_datamodule, build_evaluation, choices
from robustlab.evaluation.record import RunRecord
from robustlab.runs import evaluate_and_record, run_directory
from robustlab.stages import fit_or_reuse
from robustlab.validation import check_config


def run(cfg: DictConfig) -> RunRecord | None:
    """The run's record (None in a DDP process other than 0)."""
    check_config(cfg)
    with run_directory(cfg) as directory:
        if directory.finished is not None:
            return directory.finished
        pl.seed_everything(cfg.seed, workers=True)
        datamodule = build_datamodule(cfg.dataset)
        classifier = build_classifier(cfg)
        evaluation = build_evaluation(cfg)  # its attacks are built (and checked) before training
        training = fit_or_reuse(cfg, classifier, datamodule)
        pl.seed_everything(cfg.seed, workers=True)  # the evaluation's randomness does not depend on how training went
        return evaluate_and_record(cfg, classifier, datamodule, evaluation, training.checkpoint, choices(), training,
                                   steps=training.steps, fingerprint=directory.fingerprint)
