"""DDP under Hydra: how Lightning starts a job's other processes, and the clean-up between multirun jobs.

Lightning's DDP launcher starts processes 1…n−1 by running a command again; each process then runs the
whole job (`train.run`), takes part in every `fit` and `test`, and only process 0 writes (markers,
metrics.json, figures). Lightning does this once per Python process: it leaves its variables in the
environment and its process group open. A multirun runs its jobs one after another in one process, so
`job_processes` closes both after each job, and the next job starts processes of its own.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

# What Lightning's launcher sets in process 0's environment (lightning_fabric's subprocess_script launcher).
LAUNCH_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


def process_command(local_rank: int) -> tuple[list[str], str]:
    """The command that starts DDP process `local_rank` of this Hydra job, and the directory to start it in.

    Lightning's own re-runs the command line, which in a multirun is the whole sweep (and in a joblib worker
    not the script at all). This runs this job alone: `python -m robustlab <task>` with the job's config
    directory (a project's `--config-dir`) and its own overrides, as a single run writing into the job's
    directory, from the directory the job was started in (where the project's modules are).
    """
    hydra = HydraConfig.get()
    project = [f"--config-dir={source.path.removeprefix('file://')}" for source in hydra.runtime.config_sources
               if source.provider == "command-line"]
    typed = [str(override) for override in OmegaConf.to_container(hydra.overrides.task)]  # type: ignore[union-attr]
    overrides = [*typed, "hydra.mode=RUN", f'hydra.run.dir="{hydra.runtime.output_dir}"',
                 f"hydra.job.name={hydra.job.name}_ddp_process_{local_rank}", "hydra.output_subdir=null"]
    return [sys.executable, "-m", "robustlab", str(hydra.job.config_name), *project, *overrides], hydra.runtime.cwd


@contextmanager
def job_processes():
    """Run one job; afterwards close its DDP process group and forget Lightning's launch variables."""
    from pytorch_lightning.strategies.launchers import subprocess_script

    subprocess_script._hydra_subprocess_cmd = process_command
    saved = {name: os.environ.get(name) for name in LAUNCH_VARIABLES}
    try:
        yield
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
