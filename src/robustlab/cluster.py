"""A multirun on a SLURM cluster (`hydra/launcher=slurm`): one job per cell, asked for what the cell needs.

`SlurmLauncher` is hydra-submitit's launcher with what a cluster user meets next:

- **Resources from the experiment.** Each cell's request follows its own config (`Resources.of`): `trainer=gpu`
  one GPU, `trainer=ddp` with `trainer.devices=N` N tasks per node (and N GPUs unless on the CPU), a CPU
  trainer no GPU; memory from the dataset it holds in memory. A value set under `hydra.launcher.*` wins. A
  request that no partition can meet (`sinfo`) is refused before anything is submitted, naming the key.
- **Preemption.** SIGUSR1 and SIGUSR2 (a preemption, `scancel --signal=...`, or the time limit's warning,
  `--signal=USR2@<signal_delay_s>`) go to submitit's handler, which requeues the job; `scontrol requeue` requeues
  it too. Either way the job runs the cell again in its next allocation, and the cell resumes its training from
  its `last.ckpt` (`stages.fit_or_reuse`). Lightning's own SLURM requeue stays out of it: it installs its
  SIGUSR1 handler only where none exists.
- **The submitting process may die.** Jobs are independent of it. Each cell's directory gets `slurm.json` (its
  job id and log files) when it is submitted; the same command run again skips the finished cells, follows
  the cells whose job is still queued or running, and submits the rest. Two jobs of one cell would still train
  it once: the run directory and the checkpoint directory are locked (`files.locked`, flock, which holds across
  nodes on a shared filesystem).
- **A failed cell is a line.** The launcher waits for every cell, then names each failed one with its job id,
  its log file and the error's last line, and stops the sweep with `SweepFailed` (exit status 2).
- **Quiet polling.** Job states come from `squeue`, which every cluster has, never from `sacct` (off where
  the cluster keeps no accounting), so polling prints only a cell's change of state.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, astuple, dataclass
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher import submitit_launcher
from omegaconf import DictConfig, OmegaConf, open_dict

from robustlab.errors import ConfigError, RobustlabError, exit_on_user_error
from robustlab.evaluation.record import FILE_NAME, SLURM_JOB_FILE, RunRecord
from robustlab.fingerprint import resolve_fingerprint
from robustlab.validation import check_complete, check_step_sizes

log = logging.getLogger(__name__)

# squeue's states of a job that has not ended (a requeued job is PENDING again, with the same id).
LIVE_STATES = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
               "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT", "STOPPED"}
BASE_MEMORY_GB = 4  # Python, PyTorch, Lightning and a model, per task
RESOURCE_KEYS = ("nodes", "tasks_per_node", "gpus_per_node", "cpus_per_task", "mem_gb")


class SweepFailed(RobustlabError):
    """Cells of a SLURM sweep that ended without a result; the others finished and are on disk."""


@dataclass(frozen=True)
class Resources:
    """What one cell asks SLURM for, per job."""

    nodes: int
    tasks_per_node: int
    gpus_per_node: int
    cpus_per_task: int
    mem_gb: int

    @classmethod
    def of(cls, cfg: DictConfig, given: dict[str, Any]) -> tuple[Resources, dict[str, str]]:
        """The request for the cell `cfg`, and where each value came from (for messages). `given`: the values
        set under hydra.launcher (None: from the experiment)."""
        trainer = cfg.trainer
        accelerator = str(trainer.get("accelerator", "cpu"))
        devices = trainer.get("devices", 1)
        count = len(devices) if isinstance(devices, Sequence) and not isinstance(devices, str) else devices
        gpu = accelerator in ("gpu", "cuda")
        ddp = "ddp" in str(trainer.get("strategy") or "")
        if not isinstance(count, int) or count < 1:
            raise ConfigError(f"trainer.devices={devices!r}: on SLURM a job asks for a number of devices; set "
                              "trainer.devices=N (N ≥ 1), or hydra.launcher.gpus_per_node and tasks_per_node")
        dataset = cfg.get("dataset") or {}  # none chosen: `evaluate ckpt_path=...` takes the checkpoint's
        module = dataset.get("datamodule") or {}
        images = int(dataset.get("images") or module.get("num_train", 0) + module.get("num_test", 0))
        image_bytes = int(dataset.get("channels", 3)) * int(dataset.get("image_size", 32)) ** 2 * 4  # float32
        tasks = count if ddp else 1
        derived = {
            "nodes": (int(trainer.get("num_nodes", 1) or 1), "trainer.num_nodes"),
            "tasks_per_node": (tasks, "one task per device under DDP" if ddp else "one process"),
            "gpus_per_node": (count if gpu else 0, f"trainer.accelerator={accelerator}, trainer.devices={devices}"),
            "cpus_per_task": (2 if gpu else 1, "a GPU process: 2 CPUs; a CPU process: 1"),
            "mem_gb": (tasks * (BASE_MEMORY_GB + math.ceil(2 * images * image_bytes / 2**30)),
                       f"{BASE_MEMORY_GB} GB per task plus {images} images in memory (dataset.images)"),
        }
        values, sources = {}, {}
        for key in RESOURCE_KEYS:
            if given.get(key) is not None:
                values[key], sources[key] = int(given[key]), "set"
            else:
                values[key], sources[key] = derived[key]
        return cls(**values), sources


@dataclass(frozen=True)
class Partition:
    name: str
    default: bool
    cpus: int  # per node
    memory_mb: int  # per node
    gpus: int  # per node
    nodes: int


SINFO_FORMAT = "%P|%c|%m|%G|%D"  # partition (default starred), CPUs and MB per node, generic resources, nodes


def partitions() -> list[Partition]:
    """The cluster's partitions as `sinfo` reports them."""
    if shutil.which("sinfo") is None:
        raise ConfigError("hydra/launcher=slurm: sinfo is not on PATH; run the sweep from a SLURM cluster's "
                          "login node (or choose another hydra/launcher)")
    result = subprocess.run(["sinfo", "-h", "-o", SINFO_FORMAT], capture_output=True, text=True)
    if result.returncode != 0:
        raise ConfigError(f"hydra/launcher=slurm: sinfo failed: {result.stderr.strip()}")
    return parse_sinfo(result.stdout)


def parse_sinfo(text: str) -> list[Partition]:
    """`sinfo -h -o SINFO_FORMAT`'s lines as partitions, each with its largest kind of node (a partition with
    several kinds has a line per kind)."""
    found: dict[str, Partition] = {}
    for line in text.splitlines():
        if line.count("|") != 4:
            continue
        name, cpus, memory, gres, nodes = line.split("|")
        gpus = 0
        for resource in gres.split(","):  # gpu:4, gpu:a100:8(S:0-1), (null)
            fields = resource.split("(")[0].split(":")
            if fields[0] == "gpu" and fields[-1].isdigit():
                gpus += int(fields[-1])
        partition = Partition(name.rstrip("*"), name.endswith("*"), int(cpus.rstrip("+")), int(memory.rstrip("+")),
                              gpus, int(nodes))
        previous = found.get(partition.name)
        if previous is None or (partition.gpus, partition.cpus, partition.memory_mb) > \
                (previous.gpus, previous.cpus, previous.memory_mb):
            found[partition.name] = partition
    return list(found.values())


def check_fits(resources: Resources, sources: dict[str, str], partition: str | None,
               available: list[Partition]) -> None:
    """Refuse a request that the chosen partition (or the default one) cannot meet, naming the key."""
    names = ", ".join(p.name for p in available)
    chosen = [p for p in available if (p.name == partition if partition else p.default)]
    if not chosen:
        raise ConfigError(f"hydra.launcher.partition={partition!r}: the cluster has "
                          f"{'no such partition' if partition else 'no default partition'} (sinfo: {names})")
    part = chosen[0]
    limits = {"nodes": part.nodes, "tasks_per_node": part.cpus, "gpus_per_node": part.gpus,
              "cpus_per_task": part.cpus // resources.tasks_per_node, "mem_gb": part.memory_mb // 1024}
    for key in RESOURCE_KEYS:
        asked = getattr(resources, key)
        if asked > limits[key]:
            source = "" if sources[key] == "set" else f" (from the experiment: {sources[key]})"
            raise ConfigError(
                f"hydra.launcher.{key}={asked}{source} cannot be met: partition {part.name} has {part.nodes} node(s) "
                f"of {part.cpus} CPUs, {part.memory_mb} MB, {part.gpus} GPUs (sinfo). Set hydra.launcher.{key}, "
                f"or another hydra.launcher.partition (one of {names})")


def job_states(job_ids: set[str]) -> dict[str, str]:
    """squeue's state of each of these jobs that squeue still knows (an ended job is soon forgotten)."""
    if not job_ids:
        return {}
    result = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T", "-j", ",".join(sorted(job_ids))],
                            capture_output=True, text=True)
    if result.returncode != 0:
        if "Invalid job id" in result.stderr:  # every one of them has been forgotten: all ended
            return {}
        raise OSError(result.stderr.strip())
    return dict(line.split("|", 1) for line in result.stdout.splitlines() if "|" in line)


def last_line(path: Path) -> str:
    """The last line of a log file that says something (an error's message)."""
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return f"(no log at {path})"
    ignored = ("srun: error", "submitit ", "slurmstepd:")
    told = [line for line in lines if not line.startswith(ignored)]
    return (told or lines or ["(empty log)"])[-1]


@dataclass(eq=False)  # a cell is itself: compared and hashed by identity
class Cell:
    """One job of the sweep: its overrides, number, directory and request."""

    overrides: list[str]
    number: int
    directory: Path
    resources: Resources
    sources: dict[str, str]  # where each resource value came from (for messages)
    config: DictConfig
    fingerprint: str  # the run's: a metrics.json with it, and without errors, is this cell finished
    job_id: str | None = None
    log_file: str = ""

    @property
    def name(self) -> str:
        return " ".join(filter_overrides(self.overrides)) or "(no overrides)"

    def finished(self) -> bool:
        """metrics.json of this run, without errors (a record with errors runs again)."""
        path = self.directory / FILE_NAME
        if not path.is_file():
            return False
        try:
            record = RunRecord.read(path)
        except (OSError, ValueError, TypeError, KeyError):
            return False
        return not record.errors and record.run_fingerprint == self.fingerprint

    def submitted_job(self) -> dict | None:
        try:
            return json.loads((self.directory / SLURM_JOB_FILE).read_text())
        except (OSError, ValueError):
            return None


class SlurmLauncher(submitit_launcher.SlurmLauncher):
    """hydra-submitit's SLURM launcher, with a request per cell, resubmission that skips finished and running
    cells, failed cells named at the end, and quiet polling (see the module's docstring)."""

    def __init__(self, poll_s: float = 15.0, **params: Any) -> None:
        super().__init__(**params)
        self.poll_s = float(poll_s)

    def __call__(self, *args: Any, **kwargs: Any) -> JobReturn:
        # Runs in the job. submitit handles SIGUSR2 (requeue); SIGUSR1, the other preemption signal, the same way.
        handler = signal.getsignal(signal.SIGUSR2)
        if callable(handler):
            signal.signal(signal.SIGUSR1, handler)
        return super().__call__(*args, **kwargs)

    # -- in the submitting process --------------------------------------------------------------------------
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        with exit_on_user_error():  # a refused request or failed cells: one message, exit status 2
            return self._launch(job_overrides, initial_job_idx)

    def _launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None and self.hydra_context is not None
        given = {key: self.params.get(key) for key in RESOURCE_KEYS}
        cells = [self._cell(list(overrides), initial_job_idx + index, given)
                 for index, overrides in enumerate(job_overrides)]
        available = partitions()
        for cell in cells:
            check_complete(cell.config)  # what a job would refuse at its start, refused before any is submitted
            if cell.config.get("dataset") is not None:  # `evaluate ckpt_path=...`: the checkpoint's, in the job
                check_step_sizes(cell.config)
            check_fits(cell.resources, cell.sources, self.params.get("partition"), available)

        finished = [cell for cell in cells if cell.finished()]
        running = self._still_running([cell for cell in cells if cell not in finished])
        to_submit = [cell for cell in cells if cell not in finished and cell not in running]
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        log.info(f"SLURM sweep in {sweep_dir}: {len(cells)} cells; {len(finished)} finished, {len(running)} "
                 f"queued or running, {len(to_submit)} to submit")
        self._submit(to_submit, sweep_dir)
        failed = self._wait([*running, *to_submit])
        if failed:
            lines = [f"  {cell.name}: job {cell.job_id}, log {cell.log_file}: {error}" for cell, error in failed]
            raise SweepFailed(
                f"{len(failed)} of {len(cells)} cells failed (the others finished; the same command resubmits only "
                f"the cells without a result):\n" + "\n".join(lines) + f"\nThe finished cells' report: robustlab "
                f"report {sweep_dir}")
        return [self._job_return(cell) for cell in cells]

    def _cell(self, overrides: list[str], number: int, given: dict[str, Any]) -> Cell:
        assert self.config is not None and self.hydra_context is not None
        config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(config.hydra.job):
            config.hydra.job.num = number
        HydraConfig.instance().set_config(config)  # `${hydra:job.num}`, `${choice:...}` as in the job
        directory = Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)
        resources, sources = Resources.of(config, given)
        return Cell(overrides, number, directory, resources, sources, config,
                    resolve_fingerprint("run", _root_=config))

    def _still_running(self, cells: list[Cell]) -> list[Cell]:
        """The cells whose job (from an earlier submission of this sweep) is still queued or running."""
        jobs = {cell: job for cell in cells if (job := cell.submitted_job())}
        states = job_states({job["job_id"] for job in jobs.values()})
        running = []
        for cell, job in jobs.items():
            if states.get(job["job_id"]) in LIVE_STATES:
                cell.job_id, cell.log_file = job["job_id"], job["stderr"]
                running.append(cell)
        return running

    def _submit(self, cells: list[Cell], sweep_dir: Path) -> None:
        """Submit the cells as job arrays, one per distinct request; write each cell's slurm.json."""
        import submitit

        if not cells:
            return
        sweep_dir.mkdir(parents=True, exist_ok=True)
        base = {key: value for key, value in self.params.items()
                if key not in ("submitit_folder", "max_num_timeout", *RESOURCE_KEYS)}
        queue_keys = set(OmegaConf.structured(submitit_launcher.BaseQueueConf).keys())
        for resources in sorted({cell.resources for cell in cells}, key=astuple):
            group = [cell for cell in cells if cell.resources == resources]
            executor = submitit.AutoExecutor(folder=self.params["submitit_folder"], cluster="slurm",
                                             slurm_max_num_timeout=self.params.get("max_num_timeout", 0))
            request = {**base, **asdict(resources)}
            if not resources.gpus_per_node:
                request["gpus_per_node"] = None  # no GPU: no gres request at all
            executor.update_parameters(**{key if key in queue_keys else f"slurm_{key}": value
                                          for key, value in request.items()})
            arguments = [(cell.overrides, "hydra.sweep.dir", cell.number, f"job_id_for_{cell.number}",
                          Singleton.get_state()) for cell in group]
            jobs = executor.map_array(self, *zip(*arguments))
            for cell, job in zip(group, jobs):
                cell.job_id, cell.log_file = job.job_id, str(job.paths.stderr)
                cell.directory.mkdir(parents=True, exist_ok=True)
                (cell.directory / SLURM_JOB_FILE).write_text(json.dumps(
                    {"job_id": job.job_id, "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr),
                     "result": str(job.paths.result_pickle), "submitted": time.time(),
                     "request": asdict(resources)}, indent=2) + "\n")
                log.info(f"\t#{cell.number} job {job.job_id}: {cell.name}")

    def _wait(self, cells: list[Cell]) -> list[tuple[Cell, str]]:
        """Follow the jobs with squeue until each has ended; the failed cells with their error's last line."""
        if not cells:
            return []
        log.info(f"waiting for {len(cells)} jobs: their states come from squeue every {self.poll_s:g} s (not "
                 "sacct, which a cluster without accounting cannot answer)")
        waiting = {str(cell.job_id): cell for cell in cells}
        seen: dict[str, str] = {}
        failed: list[tuple[Cell, str]] = []
        while waiting:
            try:
                states = job_states(set(waiting))
            except OSError as squeue_error:
                log.warning(f"squeue failed ({squeue_error}); trying again in {self.poll_s:g} s")
                time.sleep(self.poll_s)
                continue
            for job_id, cell in list(waiting.items()):
                state = states.get(job_id, "ENDED")
                if seen.get(job_id) != state:
                    seen[job_id] = state
                    log.info(f"job {job_id} {state}: {cell.name}")
                if state in LIVE_STATES:
                    continue
                del waiting[job_id]
                message = self._error(cell)
                if message is not None:
                    failed.append((cell, message))
            if waiting:
                time.sleep(self.poll_s)
        return failed

    def _error(self, cell: Cell) -> str | None:
        """None if the cell finished; else its error's last line."""
        if cell.finished():
            return None
        result = Path((cell.submitted_job() or {}).get("result", ""))
        for _ in range(10):  # the result may reach a shared filesystem a moment after the job ends
            if result.is_file():
                break
            time.sleep(0.5)
        if not result.is_file():  # no result: the job died (killed, out of memory) or exited with a message
            return last_line(Path(cell.log_file))
        from submitit.core.utils import pickle_load

        outcome, value = pickle_load(result)
        if outcome == "error":
            return str(value).strip().splitlines()[-1]
        if isinstance(value, JobReturn) and value.status == JobStatus.FAILED:
            return f"{type(value._return_value).__name__}: {value._return_value}"
        return None  # the job ran its cell to the end

    def _job_return(self, cell: Cell) -> JobReturn:
        job_return = JobReturn(overrides=cell.overrides, cfg=cell.config, hydra_cfg=cell.config.hydra,
                               working_dir=str(cell.directory), task_name=str(cell.config.hydra.job.name),
                               status=JobStatus.COMPLETED)
        job_return.return_value = None
        return job_return

