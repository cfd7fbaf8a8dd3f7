"""The tasks the `robustlab` command runs as Hydra apps: `train` and `evaluate`, each over robustlab's configs.

Importing this module registers the config's resolvers: a multirun launcher that runs jobs in other processes
(joblib, submitit) unpickles a task function, importing this module, before Hydra resolves the job's directory
(`${fingerprint:run}`)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import hydra
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from robustlab.configuration import config_dir
from robustlab.errors import exit_on_user_error
from robustlab.resolvers import register_resolvers
from robustlab.validation import check_config, composition_refused

register_resolvers()


def train(cfg: DictConfig) -> None:
    import robustlab.train

    with exit_on_user_error():
        robustlab.train.run(cfg)


def evaluate(cfg: DictConfig) -> None:
    import robustlab.evaluate

    with exit_on_user_error():
        robustlab.evaluate.run(cfg)


def run_app(task: str) -> None:
    """`task`'s Hydra app on sys.argv. A config Hydra cannot compose (a value of the wrong type for its schema, an
    unknown key or option, an override it cannot parse) is one line naming the key, exit status 2, like every
    other refused value; HYDRA_FULL_ERROR=1 (set by the user) keeps Hydra's own report, as Hydra documents."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        hydra_app(task)()
        return
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises what it cannot compose, instead of printing it and exiting 1
    with exit_on_user_error(), composition_refused([argument for argument in sys.argv[1:]
                                                    if not argument.startswith("-")]):
        hydra_app(task)()


class CheckBeforeRun(Callback):
    """Hydra's callback (conf/hydra/default.yaml): the composed config checked before Hydra creates the run's
    directory, so a refused value writes nothing (`paths.output_root=''` would otherwise make one at /runs).
    A multirun's common values are checked before its first job; each job's own when it starts. Hydra turns a
    callback's exception into a warning and goes on, so a refusal exits here (SystemExit passes through)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        with exit_on_user_error():
            check_config(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        with exit_on_user_error():
            check_config(config, here=False)  # the launcher's jobs may run on other machines (SLURM)


def hydra_app(task: str) -> Callable[[], None]:
    """Hydra's app for `task` (`train.yaml` or `evaluate.yaml`): called without arguments, it parses sys.argv."""
    function = {"train": train, "evaluate": evaluate}[task]
    return hydra.main(version_base="1.3", config_path=str(config_dir()), config_name=task)(function)
