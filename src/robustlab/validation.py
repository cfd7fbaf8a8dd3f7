"""Checks on a whole composed config, run before anything is built or trained.

Constructors check their own arguments (`errors.require`); what is checked here spans several nodes or is
a rule for configs only (a config that asks for a zero PGD step is a mistake: it silently reports clean
accuracy, even though `PGD(step_size=0)` is a valid no-op in Python).
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from robustlab.configuration import to_plain
from robustlab.errors import CheckpointError, ConfigError, InvalidValue, is_number

REUSE_OPTIONS = ("same_code", "any_version")


def check_config(cfg: DictConfig) -> None:
    check_complete(cfg)
    check_step_sizes(cfg)
    check_accelerator(cfg)
    if cfg.get("reuse") not in REUSE_OPTIONS:
        raise InvalidValue("reuse", cfg.get("reuse"), " or ".join(REUSE_OPTIONS))


def check_accelerator(cfg: DictConfig) -> None:
    """A GPU trainer on a machine without one is refused, not silently run on the CPU."""
    accelerator = OmegaConf.select(cfg, "trainer.accelerator", default=None)
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator={accelerator!r} but PyTorch sees no CUDA GPU on this machine: use "
                          "trainer=default to run on the CPU, or add trainer.accelerator=cpu to keep the rest of "
                          "this trainer config (e.g. trainer=ddp trainer.accelerator=cpu trainer.devices=2)")


def check_complete(cfg: DictConfig) -> None:
    """Every mandatory value (`???`) is set; checked without resolving anything else."""
    missing = list(_missing_keys(cfg, ""))
    if missing:
        raise ConfigError(f"missing mandatory value(s): {', '.join(missing)} (set each on the command line, "
                          f"e.g. {missing[0]}=...)")


def _missing_keys(node: DictConfig, prefix: str):
    for key in map(str, node.keys()):
        full_key = f"{prefix}.{key}" if prefix else key
        if not prefix and key == "hydra":
            continue
        child = node._get_node(key)
        if OmegaConf.is_missing(node, key):
            yield full_key
        elif not OmegaConf.is_interpolation(node, key) and isinstance(child, DictConfig):
            yield from _missing_keys(child, full_key)


def check_step_sizes(cfg: DictConfig) -> None:
    """Budgets and step sizes as written in the config, before anything resolves them: every `eps` a number
    ≥ 0 (or null: an unbounded attack), every `step_size` > 0 (or null). Values derived by interpolation
    (fgsm's step `${.eps}`, an attack's `${dataset.eps.linf}`) are checked at their source."""
    _check_budgets(cfg, "")


def _check_budgets(node: DictConfig | ListConfig, prefix: str) -> None:
    if isinstance(node, ListConfig):
        for index, item in enumerate(node):
            if isinstance(item, (DictConfig, ListConfig)):
                _check_budgets(item, f"{prefix}.{index}")
        return
    for key in map(str, node.keys()):
        if (not prefix and key in {"hydra", "paths"}) or OmegaConf.is_interpolation(node, key):
            continue  # Hydra's settings and file locations; a derived value, checked at its source
        value = node[key]
        if key == "eps":
            budgets = list(value.values()) if isinstance(value, DictConfig) else [value]  # a dataset's: per norm
            if not all(budget is None or (is_number(budget) and budget >= 0) for budget in budgets):
                raise InvalidValue("eps", value, "a number ≥ 0, or null for an unbounded attack", prefix)
        # ε = 0 means no attack, where any step is exact.
        zero_budget = node.get("eps") == 0
        if key == "step_size" and isinstance(value, (int, float)) and not isinstance(value, bool) and value <= 0 \
                and not (value == 0 and zero_budget):
            raise InvalidValue("step_size", value, "a number > 0, or null for 2.5·eps/steps", prefix)
        if isinstance(value, (DictConfig, ListConfig)):
            _check_budgets(value, f"{prefix}.{key}" if prefix else key)


def check_model_fits_dataset(model: nn.Module, cfg: DictConfig, key: str = "model") -> None:
    """One forward pass of a dataset-shaped batch: a channel or class mismatch fails here, not mid-training.

    `key` is the config node that built `model` (`defense` for what a defense deploys); the message starts with it.
    """
    subject = "the model" if key == "model" else "what the defense deploys"
    dataset = cfg.dataset
    shape = (2, dataset.channels, dataset.image_size, dataset.image_size)
    description = (f"dataset {dataset.name} ({dataset.channels}×{dataset.image_size}×{dataset.image_size}, "
                   f"{dataset.num_classes} classes)")
    was_training = model.training
    try:
        with torch.no_grad():
            logits = model.eval()(torch.zeros(shape))
    except RuntimeError as error:
        raise ConfigError(f"{key}: {subject} does not accept images of {description}: model.in_channels="
                          f"{OmegaConf.select(cfg, 'model.in_channels')}, dataset.channels={dataset.channels} "
                          f"({str(error).splitlines()[0]})") from None
    finally:
        model.train(was_training)
    if logits.shape != (2, dataset.num_classes):
        raise ConfigError(f"{key}: {subject} predicts {logits.shape[-1]} classes but {description}: model.num_classes="
                          f"{OmegaConf.select(cfg, 'model.num_classes')}, dataset.num_classes={dataset.num_classes}")


def check_checkpoint_matches(stored: dict, cfg) -> None:
    """Refuse to evaluate a checkpoint on another dataset or as another model than it was trained as.

    `cfg.dataset` / `cfg.model`, when the user chose them, must describe what the checkpoint holds.
    """
    for group, identity in (("dataset", ("name", "channels", "image_size", "num_classes")),
                            ("model", None)):
        chosen = cfg.get(group)
        if chosen is None:
            continue
        expected = to_plain(chosen)
        trained = stored[group]
        keys = identity or [key for key in expected if key not in ("mean", "std")]
        differences = [f"{group}.{key}={expected.get(key)!r} but the checkpoint has {trained.get(key)!r}"
                       for key in keys if expected.get(key) != trained.get(key)]
        if differences:
            trained_as = stored.get("choices", {}).get(group, trained.get("name", trained.get("_target_")))
            raise CheckpointError(f"the checkpoint was trained with {group} {trained_as}, not the one chosen: "
                                  + "; ".join(differences))
