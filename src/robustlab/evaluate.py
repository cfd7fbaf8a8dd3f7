"""`python evaluate.py ckpt_path=...`: attack an existing checkpoint, write metrics.json."""

from __future__ import annotations

import pytorch_lightning as pl
from omegaconf import DictConfig

from robustlab.builders import build_datamodule, choices
from robustlab.checkpoints import (check_checkpoint_matches, classifier_from_checkpoint, read_checkpoint,
                                   with_checkpoint_dataset)
from robustlab.evaluation.engine import Evaluation
from robustlab.evaluation.record import RunRecord
from robustlab.runs import evaluate_and_record, run_directory
from robustlab.validation import check_accelerator, check_complete, check_step_sizes


def run(cfg: DictConfig) -> RunRecord | None:
    """The run's record (None in a DDP process other than 0)."""
    check_complete(cfg)
    check_accelerator(cfg)
    checkpoint = read_checkpoint(cfg.ckpt_path)
    stored = checkpoint["robustlab"]
    check_checkpoint_matches(stored, cfg)
    with_checkpoint_dataset(cfg, stored)  # evaluate on the data the checkpoint was trained on, unless chosen
    check_step_sizes(cfg)  # attack budgets interpolate from the dataset, so only now
    with run_directory(cfg) as done:
        if done is not None:
            return done
        pl.seed_everything(cfg.seed, workers=True)
        evaluation = Evaluation.from_config(cfg)  # its attacks are built (and checked) first
        datamodule = build_datamodule(cfg.dataset)
        classifier = classifier_from_checkpoint(checkpoint, cfg.performance)
        return evaluate_and_record(cfg, classifier, datamodule, evaluation, cfg.ckpt_path,
                                   chosen={**stored.get("choices", {}), **choices()},
                                   steps=int(checkpoint.get("global_step", 0)))
