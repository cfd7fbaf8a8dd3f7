"""Where robustlab's config groups are, Hydra instantiation with error messages that name the full config key,
and the config's plain resolvers (registered with the others by `resolvers.register_resolvers`)."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

import hydra.utils
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf, open_dict

from robustlab.errors import ConfigError, InvalidValue


def config_dir() -> Path:
    """robustlab's own config groups: `robustlab/conf` in an installed package (the wheel puts the repository's
    `conf/` there), else the checkout's `conf/` (an editable install, a clone)."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "conf", package.parents[1] / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise ConfigError(f"robustlab's configs are missing: neither {package / 'conf'} nor {package.parents[1] / 'conf'} "
                      "holds train.yaml (a broken installation: reinstall robustlab)")


_FULL_KEY = re.compile(r"^full_key: (\S+)$", re.MULTILINE)
_TARGET = re.compile(r"^Error locating target '([^']*)'")


def instantiate(node: DictConfig, **kwargs: Any) -> Any:
    """`hydra.utils.instantiate`, re-raising a constructor's `InvalidValue` under its full config key.

    Hydra wraps constructor errors in an `InstantiationException` whose message ends with the key of the
    node being built (e.g. `defense.attack`); the user gets `defense.attack.eps=-0.1 is not allowed: ...`.
    """
    try:
        return hydra.utils.instantiate(node, **kwargs)
    except InstantiationException as error:
        match = _FULL_KEY.search(str(error))
        prefix = match.group(1) if match else _node_key(node)
        located = _TARGET.search(str(error))
        if located:  # Hydra could not import the `_target_`
            missing = _in_chain(error, ImportError)
            raise unimportable(prefix, located.group(1), str(missing) if missing else "not found") from None
        cause = _in_chain(error, InvalidValue)
        if not isinstance(cause, InvalidValue):
            raise
        raise cause.under(prefix) from None


def unimportable(prefix: str, target: str, reason: str) -> ConfigError:
    """`<prefix>._target_` names something that cannot be imported: why, and where its module was looked for."""
    key = f"{prefix}._target_" if prefix else "_target_"
    module = target.rpartition(".")[0] or target
    searched = [entry or os.getcwd() for entry in sys.path if not entry or Path(entry).is_dir()]
    return ConfigError(f"{key}={target!r} cannot be imported ({' '.join(reason.split())}): a `_target_` is "
                       f"`module.Class`, and module {module!r} was looked for in {', '.join(searched)} (for your "
                       "own files: run `robustlab` from your project's directory, where they are, or install them)")


def _in_chain(error: BaseException | None, kind: type[Exception]) -> Exception | None:
    while error is not None:
        if isinstance(error, kind):
            return error
        error = error.__cause__ or error.__context__
    return None


def _node_key(node: DictConfig) -> str:
    return node._get_full_key(None) if OmegaConf.is_config(node) else ""


def to_plain(node: Any) -> Any:
    """A resolved, plain-Python copy of a config node (for metrics.json and checkpoints)."""
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def gpu_for_job(job_number: Any) -> int | list[int]:
    """`${gpu_for_job:${hydra:job.num}}`: which GPU a run uses.

    In a multirun, job k gets GPU k mod the GPU count, so a launcher running several jobs at once spreads
    them over the machine's GPUs (several jobs per GPU when there are more jobs than GPUs). A single run has
    no job number (Hydra leaves it unset) and gets one GPU, the first visible one.
    """
    import torch

    if job_number is None or torch.cuda.device_count() < 2:
        return 1
    return [int(job_number) % torch.cuda.device_count()]


def multiply(*factors: float | None) -> float | None:
    """`${multiply:1.25,${.eps}}`: a product of numbers, e.g. a step size as a multiple of ε; null if a factor
    is null (`attack.eps=null`: an unbounded attack has no step size derived from ε)."""
    product = 1.0
    for factor in factors:
        if factor is None:
            return None
        product *= float(factor)
    return product


def with_checkpoint_dataset(cfg: DictConfig, stored: dict) -> None:
    """Where no dataset is chosen (`python evaluate.py ckpt_path=...`), the one the checkpoint was trained on
    (`stored`: the checkpoint's `robustlab` entry)."""
    if cfg.get("dataset") is None:
        with open_dict(cfg):
            cfg.dataset = OmegaConf.create(stored["dataset"])
