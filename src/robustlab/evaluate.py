"""`python evaluate.py ckpt_path=...`: attack an existing checkpoint, write metrics.json."""

from __future__ import annotations

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from robustlab.checkpoints import classifier_from_checkpoint, read_checkpoint
from robustlab.evaluation.runner import evaluate, record_run
from robustlab.experiment import build_datamodule, build_trainer, choices, evaluation_attacks


def run(cfg: DictConfig) -> dict:
    pl.seed_everything(cfg.seed, workers=True)
    checkpoint = read_checkpoint(cfg.ckpt_path)
    OmegaConf.set_struct(cfg, False)
    cfg.dataset = OmegaConf.create(checkpoint["robustlab"]["dataset"])  # attack budgets interpolate from it
    datamodule = build_datamodule(cfg.dataset)
    classifier = classifier_from_checkpoint(checkpoint, attacks=evaluation_attacks(cfg), n_eval=cfg.eval.n_samples,
                                            image_grid=cfg.eval.image_grid, **cfg.performance)
    trainer = build_trainer(cfg)
    results = evaluate(trainer, classifier, datamodule, checkpoint=None)
    trained_with = checkpoint["robustlab"].get("choices", {})
    record_run(cfg, trainer, results, cfg.ckpt_path, chosen={**trained_with, **choices()})
    return results
