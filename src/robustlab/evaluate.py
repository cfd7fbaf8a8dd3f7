"""`python evaluate.py ckpt_path=... | weights=... model=... | torchscript=...`: attack a trained model, write
metrics.json."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig

from robustlab.builders import (
    build_classifier_from_checkpoint,
    build_datamodule,
    build_evaluation,
    build_external_classifier,
    choices,
)
from robustlab.checkpoints import EXTERNAL_DEFENSE, model_with_weights, read_checkpoint, read_torchscript
from robustlab.configuration import instantiate, to_plain, with_checkpoint_dataset
from robustlab.errors import ConfigError
from robustlab.evaluation.record import RunRecord
from robustlab.runs import evaluate_and_record, run_directory
from robustlab.validation import (
    check_checkpoint_matches,
    check_config,
    check_model_fits_dataset,
    check_step_sizes,
)

SOURCES = ("ckpt_path", "weights", "torchscript")


def run(cfg: DictConfig) -> RunRecord | None:
    """The run's record (None in a DDP process other than 0)."""
    check_config(cfg)
    source = chosen_source(cfg)
    if source == "ckpt_path":
        checkpoint = read_checkpoint(cfg.ckpt_path)
        stored = checkpoint["robustlab"]
        check_checkpoint_matches(stored, cfg)
        with_checkpoint_dataset(cfg, stored)  # evaluate on the data the checkpoint was trained on, unless chosen
        chosen, steps = {**stored.get("choices", {}), **choices()}, int(checkpoint.get("global_step", 0))
        build = lambda: build_classifier_from_checkpoint(checkpoint, cfg)  # noqa: E731
    else:
        model = external_model(cfg, source)
        chosen, steps = {**choices(), "defense": EXTERNAL_DEFENSE}, 0
        if source == "torchscript":
            chosen["model"] = Path(cfg.torchscript).stem
        described = to_plain(cfg.model) if source == "weights" else {"_target_": f"torchscript:{chosen['model']}"}
        build = lambda: build_external_classifier(model, described, cfg, chosen)  # noqa: E731
    check_step_sizes(cfg)  # attack budgets interpolate from the dataset, so only now
    with run_directory(cfg) as directory:
        if directory.finished is not None:
            return directory.finished
        pl.seed_everything(cfg.seed, workers=True)
        evaluation = build_evaluation(cfg)  # its attacks are built (and checked) first
        datamodule = build_datamodule(cfg.dataset)
        return evaluate_and_record(cfg, build(), datamodule, evaluation, cfg.get(source), chosen=chosen, steps=steps,
                                   fingerprint=directory.fingerprint)


def chosen_source(cfg: DictConfig) -> str:
    """Which of `ckpt_path`, `weights`, `torchscript` names the model: exactly one."""
    given = [key for key in SOURCES if cfg.get(key) is not None]
    if len(given) != 1:
        raise ConfigError(f"evaluate.py needs exactly one model to evaluate, got {' and '.join(given) or 'none'}: "
                          "ckpt_path=<robustlab checkpoint>, or weights=<state_dict file> model=<option> "
                          "dataset=<option>, or torchscript=<TorchScript file> dataset=<option>")
    return given[0]


def external_model(cfg: DictConfig, source: str):
    """The model in a state_dict file (built from `model`) or a TorchScript file, checked against the dataset."""
    if cfg.get("dataset") is None:
        raise ConfigError(f"{source}={cfg.get(source)!r} needs dataset=<option>: the file does not say what data "
                          "its model takes")
    if source == "weights":
        if cfg.get("model") is None:
            raise ConfigError(f"weights={cfg.weights!r} needs model=<option> (or model._target_=...): the "
                              "architecture the state_dict fits")
        model = model_with_weights(instantiate(cfg.model), cfg.weights)
    else:
        model = read_torchscript(cfg.torchscript)
    check_model_fits_dataset(model, cfg)
    return model.eval()
