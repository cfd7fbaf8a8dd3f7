"""The tasks the `robustlab` command runs as Hydra apps: `train` and `evaluate`, each over robustlab's configs.

Importing this module registers the config's resolvers: a multirun launcher that runs jobs in other processes
(joblib, submitit) unpickles a task function, importing this module, before Hydra resolves the job's directory
(`${fingerprint:run}`)."""

from __future__ import annotations

from collections.abc import Callable

import hydra
from omegaconf import DictConfig

from robustlab.configuration import config_dir
from robustlab.errors import exit_on_user_error
from robustlab.resolvers import register_resolvers

register_resolvers()


def train(cfg: DictConfig) -> None:
    import robustlab.train

    with exit_on_user_error():
        robustlab.train.run(cfg)


def evaluate(cfg: DictConfig) -> None:
    import robustlab.evaluate

    with exit_on_user_error():
        robustlab.evaluate.run(cfg)


def hydra_app(task: str) -> Callable[[], None]:
    """Hydra's app for `task` (`train.yaml` or `evaluate.yaml`): called without arguments, it parses sys.argv."""
    function = {"train": train, "evaluate": evaluate}[task]
    return hydra.main(version_base="1.3", config_path=str(config_dir()), config_name=task)(function)
