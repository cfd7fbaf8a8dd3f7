"""`python evaluate.py ckpt_path=...`: attack an existing checkpoint, write metrics.json."""

from __future__ import annotations

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf, open_dict

from robustlab.checkpoints import check_checkpoint_matches, classifier_from_checkpoint, read_checkpoint
from robustlab.evaluation.runner import audit_run, evaluate, record_run, run_directory
from robustlab.experiment import build_datamodule, build_trainer, choices, evaluation_attacks
from robustlab.validation import check_accelerator, check_complete, check_step_sizes


def run(cfg: DictConfig) -> dict:
    check_complete(cfg)
    check_accelerator(cfg)
    checkpoint = read_checkpoint(cfg.ckpt_path)
    stored = checkpoint["robustlab"]
    check_checkpoint_matches(stored, cfg)
    with open_dict(cfg):
        if cfg.get("dataset") is None:  # evaluate on the data the checkpoint was trained on
            cfg.dataset = OmegaConf.create(stored["dataset"])
    check_step_sizes(cfg)  # attack budgets interpolate from the dataset, so only now
    with run_directory(cfg) as done:
        if done is not None:
            return done
        pl.seed_everything(cfg.seed, workers=True)
        datamodule = build_datamodule(cfg.dataset)
        classifier = classifier_from_checkpoint(
            checkpoint, attacks=evaluation_attacks(cfg), n_eval=cfg.eval.n_samples, image_grid=cfg.eval.image_grid,
            accuracy_draws=cfg.eval.accuracy_draws, compare_without_eot=cfg.eval.compare_without_eot,
            **cfg.performance)
        trainer = build_trainer(cfg)
        results = evaluate(trainer, classifier, datamodule, checkpoint=None)
        if not trainer.is_global_zero:  # DDP: every process evaluated its share; process 0 audits and writes
            return results
        audit_run(cfg, trainer, classifier, datamodule, results)
        record_run(cfg, trainer, results, cfg.ckpt_path, chosen={**stored.get("choices", {}), **choices()},
                   steps=int(checkpoint.get("global_step", 0)))
        return results
