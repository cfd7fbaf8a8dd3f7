"""Fingerprints: which runs share a trained model, and which share a result.

`training` covers everything that changes the trained weights: the training config and the robustlab code it
runs (`code_digests.code_hash`: the modules of its `_target_`s and the training loop, followed through their
imports); `run` adds the evaluation config and the evaluation code (attacks, EOT, the evaluation passes, the
audit). So after an upgrade that changes an attack, the same command evaluates again and keeps the trained
model; a change to a model or defense trains again. Where files go, and whether work can be skipped or
resumed, follows from these two keys:

- checkpoints live in `paths.checkpoint_dir` (…/<training fingerprint>), so re-running a command, or
  sweeping attacks and budgets, resumes or reuses training instead of repeating it;
- a run directory is keyed by the run fingerprint, so the same command lands in the same directory, and a
  metrics.json holding that fingerprint marks the run as finished.

Data locations, loggers, progress bars and output paths are not part of either key.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from robustlab.checkpoints import read_checkpoint
from robustlab.code_digests import code_hash, code_modules, targets_in
from robustlab.configuration import with_checkpoint_dataset
from robustlab.errors import CheckpointError

TRAINING_KEYS = ("dataset", "model", "defense", "optimizer", "scheduler", "seed", "performance",
                 "eval.val_attack", "trainer.max_epochs", "trainer.limit_train_batches", "trainer.limit_val_batches",
                 "trainer.precision", "trainer.accumulate_grad_batches", "trainer.gradient_clip_val")
EVALUATION_KEYS = ("attack", "eval.attacks", "eval.n_samples", "eval.accuracy_draws", "eval.compare_without_eot",
                   "eval.bpda", "eval.save_adversarial",
                   "eval.mixture_attacks",
                   "eval.audit", "eval.certify", "ckpt_path", "weights", "torchscript")
# Model files from elsewhere are keyed by their content, not their path: a new file at the same path is a new run.
FILE_KEYS = ("weights", "torchscript")
# Code that runs whatever the config says: the training loop and stages; the evaluation passes, audit, record.
TRAINING_CODE = ("robustlab.stages", "robustlab.classifier")
EVALUATION_CODE = ("robustlab.runs",)
# Where the data comes from, not what it is.
LOCATION_KEYS = ("root", "system_dir", "download", "resident_on_device")
# What a dataset's config says about it without changing it (how many images it holds, for a SLURM request).
DESCRIPTIVE_KEYS = ("images",)


def _select(cfg: DictConfig, keys: tuple[str, ...]) -> dict[str, Any]:
    chosen = {}
    for key in keys:
        node = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        if node is None:
            continue
        value = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
        if key in FILE_KEYS:
            value = file_digest(str(value))
        if key == "dataset" and isinstance(value, dict):
            value = {**{k: v for k, v in value.items() if k not in DESCRIPTIVE_KEYS},
                     "datamodule": {k: v for k, v in value.get("datamodule", {}).items() if k not in LOCATION_KEYS}}
        chosen[key] = value
    return chosen


def file_digest(path: str) -> str:
    """A short hash of a file's bytes (the path itself if it cannot be read: the run then stops saying why)."""
    try:
        stat = Path(path).stat()
    except OSError:
        return path
    return _file_digest(path, stat.st_mtime_ns, stat.st_size)


@functools.cache
def _file_digest(path: str, mtime_ns: int, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def _digest(content: dict) -> str:
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:12]


def training_code(cfg: DictConfig) -> str:
    """The hash of the robustlab code that trains this config."""
    return code_hash(targets_in(_select(cfg, TRAINING_KEYS)), TRAINING_CODE)


def evaluation_code(cfg: DictConfig) -> str:
    """The hash of the robustlab code that evaluates this config (attacks, EOT, passes, audit, record)."""
    return code_hash(targets_in(_select(cfg, EVALUATION_KEYS)), EVALUATION_CODE)


def evaluation_modules(cfg: DictConfig) -> dict[str, str]:
    """The modules behind `evaluation_code`, each with its digest: what the report compares across results."""
    return code_modules(targets_in(_select(cfg, EVALUATION_KEYS)), EVALUATION_CODE)


def training_config_fingerprint(cfg: DictConfig) -> str:
    """The training config alone, whatever code runs it: what `reuse=any_version` matches on."""
    return _digest(_select(cfg, TRAINING_KEYS))


def training_fingerprint(cfg: DictConfig) -> str:
    return _digest({**_select(cfg, TRAINING_KEYS), "code": training_code(cfg)})


def run_fingerprint(cfg: DictConfig) -> str:
    return _digest({**_select(cfg, TRAINING_KEYS + EVALUATION_KEYS), "training_code": training_code(cfg),
                    "evaluation_code": evaluation_code(cfg)})


def resolve_fingerprint(kind: str, *, _root_: DictConfig) -> str:
    """`${fingerprint:training}` or `${fingerprint:run}` anywhere in a config.

    `python evaluate.py ckpt_path=...` chooses no dataset: the run directory's fingerprint then takes the
    checkpoint's, as the evaluation will. If the checkpoint cannot be read, the fingerprint says so, and the
    evaluation stops with the reason before anything else is done.
    """
    functions = {"training": training_fingerprint, "run": run_fingerprint}
    if kind not in functions:
        raise ValueError(f"${{fingerprint:{kind}}}: expected one of {sorted(functions)}")
    if OmegaConf.select(_root_, "dataset", throw_on_missing=False) is None and \
            OmegaConf.select(_root_, "ckpt_path", throw_on_missing=False) is not None:
        path = OmegaConf.select(_root_, "ckpt_path", throw_on_missing=False)
        try:
            stored = read_checkpoint(str(path))["robustlab"]
        except CheckpointError:
            return "unreadable-checkpoint"
        _root_ = copy.deepcopy(_root_)
        with_checkpoint_dataset(_root_, stored)
    return functions[kind](_root_)
