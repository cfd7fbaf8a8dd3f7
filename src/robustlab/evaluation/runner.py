"""Evaluate a trained classifier on the test split and write the run's metrics.json and HParams."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from robustlab.classifier import RobustClassifier
from robustlab.configuration import instantiate, to_plain
from robustlab.evaluation.audit import audit, flags, robustness_curves
from robustlab.evaluation.metrics_file import read_metrics, write_metrics
from robustlab.evaluation.plots import curves_figure, save_figure
from robustlab.evaluation.tensorboard import log_record
from robustlab.experiment import attack_descriptions, choices, evaluation_attack_configs
from robustlab.distributed import job_processes
from robustlab.files import locked, write_text_atomically
from robustlab.fingerprint import evaluation_modules, run_fingerprint
from robustlab.provenance import installed_packages, modules_hash, provenance
from robustlab.trained_models import Training

log = logging.getLogger(__name__)


RESULT_KEYS = ("clean_acc", "n_clean", "robust_acc", "robust_acc_without_eot", "attack_ms_per_image", "randomized",
               "accuracy_draws", "defense_metrics", "curves", "audit")


def evaluate(trainer: pl.Trainer, classifier: RobustClassifier, datamodule, checkpoint: str | None) -> dict:
    """Clean accuracy on the whole test split and robust accuracy per attack on the first n_eval images."""
    datamodule.setup("test")
    available = len(datamodule.test_set)
    if classifier.n_eval > available:
        log.info(f"evaluation: eval.n_samples={classifier.n_eval} but the test split has {available} images: "
              f"attacking all {available}")
    classifier.plan_evaluation(datamodule.test_set.tensors[0][:8].cpu())
    classifier.test_data = datamodule
    trainer.test(classifier, ckpt_path=checkpoint, verbose=False)
    return classifier.results


def audit_run(cfg: DictConfig, trainer: pl.Trainer, classifier: RobustClassifier, datamodule, results: dict) -> None:
    """Robustness curves and the gradient-masking audit on the first `eval.audit.n_samples` test images.

    Adds `curves` and `audit` to `results`, writes robustness_curves.png into the run directory and logs the
    figure to TensorBoard. `eval.audit.enabled=false` skips it (the report then shows no flags for the cell).
    """
    settings = cfg.eval.audit
    pl.seed_everything(cfg.seed, verbose=False)  # the same audit however the evaluation was sharded
    if not settings.enabled:
        results["curves"], results["audit"] = {}, {}
        return
    classifier.eval()
    predictor = classifier.predictor()
    images, labels = datamodule.test_set.tensors
    x, y = images[:settings.n_samples].to(classifier.device), labels[:settings.n_samples].to(classifier.device)
    draws = classifier.draws()
    factories = {name: ((lambda eps, node=node: instantiate(node, eps=eps)), float(node.eps))
                 for name, node in evaluation_attack_configs(cfg).items() if "eps" in node and float(node.eps) > 0}
    eot_samples = {name: getattr(attack, "eot_samples", 1) for name, attack in classifier.attacks.items()
                   if getattr(attack, "eps", 1) > 0}
    with trainer.precision_plugin.forward_context():  # the evaluation's precision (bf16 autocast on a GPU)
        results["curves"] = robustness_curves(factories, predictor, x, y, draws, list(settings.curve_factors))
        results["audit"] = audit(predictor, x, y, eps_linf=float(cfg.dataset.eps.linf),
                                 num_classes=int(cfg.dataset.num_classes), curves=results["curves"], draws=draws,
                                 randomized=classifier.randomized, eot_samples=eot_samples,
                                 pgd_steps=settings.pgd_steps, square_queries=settings.square_queries)
    figure = curves_figure(results["curves"], title=" / ".join(f"{k}={v}" for k, v in choices().items()
                                                               if k in ("dataset", "model", "defense")))
    for logger in trainer.loggers:
        if hasattr(getattr(logger, "experiment", None), "add_figure"):
            logger.experiment.add_figure("robustness_curves", figure, close=False)
    save_figure(figure, Path(cfg.paths.output_dir) / "robustness_curves.png")
    log.info(f"audit: {flags(results['audit']) or 'no flags'}")


@contextmanager
def run_directory(cfg: DictConfig):
    """Hold the run directory for the whole run; yield the finished run's results, or None if it must run.

    The same command started twice at once runs once: the second waits on the lock, then finds the run
    finished. Under DDP, the job's processes are closed when the run ends (`distributed.job_processes`).
    """
    with locked(cfg.paths.output_dir), job_processes():
        yield finished_run(cfg.paths.output_dir, run_fingerprint(cfg))


def finished_run(output_dir: str | Path, fingerprint: str) -> dict | None:
    """The results of a finished run with this fingerprint in `output_dir` (its metrics.json), or None."""
    path = Path(output_dir) / "metrics.json"
    if not path.is_file():
        return None
    record = read_metrics(path)
    if record.get("run_fingerprint") != fingerprint:
        return None
    log.info(f"run already finished (fingerprint {fingerprint}); nothing to do")
    log.info(f"metrics: {path}")
    return {key: record[key] for key in RESULT_KEYS}


def swept_settings(cfg: DictConfig, chosen: dict[str, str]) -> dict:
    """The settings a researcher sweeps, flat (HParams shows them): optimizer, learning rate, batch size,
    epochs, and every scalar setting of the evaluated attack and of the defense (its training attack's too)."""
    def flat(node, prefix: str) -> dict:
        values = {}
        for key, value in (to_plain(node) or {}).items():
            if key in ("_target_", "_partial_", "member"):  # `member` is the model, listed on its own
                continue
            if isinstance(value, dict):
                values.update(flat(value, f"{prefix}.{key}"))
            elif value is None or isinstance(value, (int, float, str, bool)):
                values[f"{prefix}.{key}"] = value
        return values

    return {"optimizer": chosen.get("optimizer"), "lr": OmegaConf.select(cfg, "optimizer.lr"),
            "batch_size": OmegaConf.select(cfg, "dataset.datamodule.batch_size"),
            "max_epochs": OmegaConf.select(cfg, "trainer.max_epochs"),
            **flat(cfg.get("attack"), "attack"), **flat(cfg.get("defense"), "defense")}


def record_run(cfg: DictConfig, trainer: pl.Trainer, results: dict, checkpoint: str | None,
               chosen: dict[str, str], training: Training | None = None, steps: int = 0) -> Path:
    """Write metrics.json into the run directory, log its final numbers and HParams to TensorBoard at the last
    training step (of `steps`; Lightning logs step k's numbers at index k − 1), print where the file is.

    `chosen` is the option of each config group that produced the evaluated model and attack; `training`
    is None when the run only evaluated a checkpoint. metrics.json is written last and atomically, and
    holds the run's fingerprint: its presence marks the run as finished.
    """
    dataset = cfg.dataset
    modules = evaluation_modules(cfg)
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
        "audit": results["audit"],          # the gradient-masking checks: see robustlab/evaluation/audit.py
        "curves": results["curves"],        # accuracy vs ε per attack on the audit's images
        "attack_ms_per_image": results["attack_ms_per_image"],
        "attacks": attack_descriptions(cfg),
        "settings": swept_settings(cfg, chosen),
        "selection": training.selection if training else None,  # the selection metric and its best value
        "train_seconds": training.train_seconds if training else None,
        "epochs": training.epochs if training else None,
        "training_reused": training.reused if training else None,
        "resumed_from": training.resumed_from if training else None,
        "checkpoint": str(Path(checkpoint).resolve()) if checkpoint else None,
        "training_fingerprint": training.fingerprint if training else None,
        "run_fingerprint": run_fingerprint(cfg),
        "training_code": training.code if training else None,  # hashes of the code that made this result
        "evaluation_code": modules_hash(modules),
        "evaluation_modules": modules,  # each module's digest: the report refuses to mix versions
        "provenance": provenance(trainer.strategy.root_device, trainer.precision),
    }
    write_text_atomically(Path(cfg.paths.output_dir) / "packages.txt", installed_packages())
    path = write_metrics(cfg.paths.output_dir, record)
    log_record(trainer.loggers, record, step=max(steps - 1, 0))
    log.info(f"metrics: {path}")
    return path
