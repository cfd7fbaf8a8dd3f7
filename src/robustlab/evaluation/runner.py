"""Evaluate a trained classifier on the test split and write the run's metrics.json and HParams."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig

from robustlab.classifier import RobustClassifier
from robustlab.evaluation.metrics_file import read_metrics, write_metrics
from robustlab.experiment import attack_descriptions
from robustlab.fingerprint import run_fingerprint
from robustlab.trained_models import Training


RESULT_KEYS = ("clean_acc", "n_clean", "robust_acc", "robust_acc_without_eot", "attack_ms_per_image", "randomized",
               "accuracy_draws", "defense_metrics")


def evaluate(trainer: pl.Trainer, classifier: RobustClassifier, datamodule, checkpoint: str | None) -> dict:
    """Clean accuracy on the whole test split and robust accuracy per attack on the first n_eval images."""
    datamodule.setup("test")
    classifier.plan_evaluation(datamodule.test_set.tensors[0][:8].cpu())
    trainer.test(classifier, dataloaders=classifier.test_loaders(datamodule), ckpt_path=checkpoint, verbose=False)
    return classifier.results


def finished_run(output_dir: str | Path, fingerprint: str) -> dict | None:
    """The results of a finished run with this fingerprint in `output_dir` (its metrics.json), or None."""
    path = Path(output_dir) / "metrics.json"
    if not path.is_file():
        return None
    record = read_metrics(path)
    if record.get("run_fingerprint") != fingerprint:
        return None
    print(f"run already finished (fingerprint {fingerprint}); nothing to do", flush=True)
    print(f"metrics: {path}", flush=True)
    return {key: record[key] for key in RESULT_KEYS}


def record_run(cfg: DictConfig, trainer: pl.Trainer, results: dict, checkpoint: str | None,
               chosen: dict[str, str], training: Training | None = None) -> Path:
    """Write metrics.json into the run directory, log the HParams summary, print where the file is.

    `chosen` is the option of each config group that produced the evaluated model and attack; `training`
    is None when the run only evaluated a checkpoint. metrics.json is written last and atomically, and
    holds the run's fingerprint: its presence marks the run as finished.
    """
    dataset = cfg.dataset
    record = {
        "dataset": chosen.get("dataset"),
        "model": chosen.get("model"),
        "defense": chosen.get("defense"),
        "attack": chosen.get("attack"),
        "seed": cfg.get("seed"),
        "eps": {"linf": float(dataset.eps.linf), "l2": float(dataset.eps.l2)},
        "n_eval": max(results["n_eval"].values(), default=0),
        "n_clean": results["n_clean"],
        "clean_acc": results["clean_acc"],
        "robust_acc": results["robust_acc"],
        "randomized": results["randomized"],
        "accuracy_draws": results["accuracy_draws"],
        "robust_acc_without_eot": results["robust_acc_without_eot"],  # only for randomized predictors: labelled apart
        "defense_metrics": results["defense_metrics"],
        "attack_ms_per_image": results["attack_ms_per_image"],
        "attacks": attack_descriptions(cfg),
        "train_seconds": training.train_seconds if training else None,
        "epochs": training.epochs if training else None,
        "training_reused": training.reused if training else None,
        "resumed_from": training.resumed_from if training else None,
        "checkpoint": str(Path(checkpoint).resolve()) if checkpoint else None,
        "training_fingerprint": training.fingerprint if training else None,
        "run_fingerprint": run_fingerprint(cfg),
    }
    path = write_metrics(cfg.paths.output_dir, record)
    hparams = {key: record[key] for key in ("dataset", "model", "defense", "attack", "seed", "epochs")}
    hparams.update(eps_linf=record["eps"]["linf"], eps_l2=record["eps"]["l2"], n_eval=record["n_eval"])
    final = {"hparams/clean_acc": record["clean_acc"]}
    final.update({f"hparams/robust_acc/{name}": value for name, value in record["robust_acc"].items()})
    for logger in trainer.loggers:
        logger.log_hyperparams({k: v if v is not None else "none" for k, v in hparams.items()}, metrics=final)
        logger.save()
    print(f"metrics: {path}", flush=True)
    return path
