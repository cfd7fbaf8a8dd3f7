"""The config's resolvers (`${choice:model}`, `${fingerprint:run}`, `${multiply:...}`, `${gpu_for_job:...}`,
`${cwd:}`), registered once and explicitly by whatever composes a config: the `robustlab` command (and the
checkout's train.py / evaluate.py, its shims), the Python API, the tests; with them, the typed schemas that every
option names in its defaults list (`schema.register_schemas`). No module registers one as a side
effect of being imported, so a config resolves the same whatever was imported first."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from omegaconf import OmegaConf

from robustlab.builders import resolve_choice
from robustlab.configuration import gpu_for_job, multiply
from robustlab.fingerprint import resolve_fingerprint
from robustlab.schema import register_schemas

RESOLVERS: dict[str, Callable[..., Any]] = {
    "choice": resolve_choice,  # the option's name (or a bare `_target_`'s class) per group
    "fingerprint": resolve_fingerprint,  # the training or run fingerprint
    "multiply": multiply,  # a step size as a multiple of ε
    "gpu_for_job": gpu_for_job,  # a multirun's job k on GPU k mod the GPU count
    # The directory the command was started in. Unlike `${hydra:runtime.cwd}` it resolves before Hydra sets up
    # a job, which a multirun's sweep directory needs (jobs never chdir: hydra.job.chdir=false).
    "cwd": os.getcwd,
}


def register_resolvers() -> None:
    """Register every resolver robustlab's configs use, and the schemas their defaults lists name (again: a no-op)."""
    register_schemas()
    for name, function in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, function)
