"""The matrix on a real SLURM cluster: scripts/slurm_local.sh stands one up from Debian's slurm-wlm and munge (one
node, this machine's CPUs, no accounting), and every sweep here goes through real sbatch, squeue, srun, scontrol
and scancel. Where the packages cannot be installed (no root), the tests skip and say why.

    python -m pytest -m slow tests/test_slurm.py
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY, run_script, script_command, script_environment
from test_faults import kill_session

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("slurm")]  # one worker runs the module

SCRIPT = ROOT / "scripts" / "slurm_local.sh"
SLURM = ["-m", "hydra/launcher=slurm", "hydra.launcher.poll_s=1"]
CELL = [*TINY, "logger=none", "eval=quick"]
COMPARED = ("clean_acc", "n_clean", "n_eval", "robust_acc", "curves", "audit", "epochs")


@pytest.fixture(scope="module")
def cluster():
    """A running one-machine cluster, taken down (daemons, jobs, state) after the module's tests."""
    started = subprocess.run(["bash", str(SCRIPT), "start"], capture_output=True, text=True, timeout=900)
    if started.returncode == 3:
        pytest.skip(f"no SLURM cluster can be stood up here: {(started.stdout + started.stderr).strip()}")
    assert started.returncode == 0, started.stdout + started.stderr
    yield
    subprocess.run(["bash", str(SCRIPT), "stop"], capture_output=True, text=True, timeout=120)


def squeue() -> dict[str, str]:
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T"], capture_output=True, text=True, check=True).stdout
    return dict(line.split("|") for line in out.splitlines())


def cells(root: Path) -> dict[str, Path]:
    """Each cell's run directory (holding slurm.json), by the value of the swept key in its overrides."""
    return {path.parent.name: path.parent for path in root.rglob("slurm.json")}


def job_of(directory: Path) -> dict:
    return json.loads((directory / "slurm.json").read_text())


def metrics(directory: Path) -> dict:
    return json.loads((directory / "metrics.json").read_text())


def wait_for(condition, timeout: float, what: str, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        if process is not None and process.poll() is not None:
            out, err = process.communicate()
            raise AssertionError(f"the sweep ended (status {process.returncode}) before {what}: {(out + err)[-3000:]}")
        time.sleep(0.5)


def local_twins(root: Path, *overrides: str) -> dict[str, dict]:
    """The same sweep run locally (Hydra's basic launcher), its metrics by run directory name."""
    result = run_script("train.py", "-m", *overrides, output_root=root, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return {path.parent.name: json.loads(path.read_text()) for path in root.rglob("metrics.json")}


def weights(record: dict) -> dict:
    return torch.load(record["checkpoint"], map_location="cpu", weights_only=True)["state_dict"]


def test_a_matrix_sweep_runs_through_sbatch_asking_for_what_each_cell_needs(cluster, tmp_path):
    """`sweep=matrix` over two defenses, no launcher setting but the partition's default: each job asks for one
    CPU task, no GPU, and memory for the dataset; states come from squeue, quietly; the report is written."""
    result = run_script("train.py", "-m", "sweep=matrix", "hydra/launcher=slurm", "hydra.launcher.poll_s=1",
                        "defense=none,fast_adv_train", *TINY, "logger=none", "eval.attacks.apgd_ce.steps=10",
                        "eval.attacks.square.queries=50", "eval.attacks.a3.steps=10", "eval.attacks.a3.target_steps=10",
                        output_root=tmp_path, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    found = cells(tmp_path / "sweeps" / "matrix")
    assert len(found) == 2 and all((directory / "metrics.json").is_file() for directory in found.values())
    for directory in found.values():
        job = job_of(directory)
        assert job["request"] == {"nodes": 1, "tasks_per_node": 1, "gpus_per_node": 0, "cpus_per_task": 1,
                                  "mem_gb": 5}  # 4 GB + 2304 synthetic 28×28 images, rounded up
        script = next(Path(job["stdout"]).parent.parent.glob("*/*_submission.sh")).read_text()
        assert "--ntasks-per-node=1" in script and "--gpus" not in script and "--mem=5GB" in script
    log = result.stdout + result.stderr
    assert log.count("states come from squeue") == 1 and "sacct" not in log.replace("not sacct", "")
    assert "Bypassing sacct error" not in log
    assert (tmp_path / "sweeps" / "matrix" / "report" / "REPORT.md").is_file()


def test_a_request_no_partition_can_meet_is_refused_before_anything_is_submitted(cluster, tmp_path):
    before = squeue()
    result = run_script("train.py", *SLURM, "trainer=gpu", "defense=none,adv_train", *CELL, output_root=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    message = result.stderr.strip().splitlines()[-1]
    assert "hydra.launcher.gpus_per_node=1" in message and "trainer.accelerator=gpu" in message
    assert "0 GPUs (sinfo)" in message and "partition debug" in message
    assert squeue() == before and not list(tmp_path.rglob(".submitit"))


def test_requeued_and_signalled_jobs_resume_and_end_like_uninterrupted_ones(cluster, tmp_path):
    """One cell's job is requeued (`scontrol requeue`), the other's preempted (`scancel --signal=USR1`), both
    after their first epoch: both run again under the same job id, resume from last.ckpt, and end with the
    metrics and weights of the same sweep run locally without interruption."""
    overrides = [*CELL, "trainer.max_epochs=5", "defense=none,fast_adv_train"]
    root = tmp_path / "slurm"
    sweep = subprocess.Popen(script_command("train.py", *SLURM, *overrides, output_root=root), cwd=ROOT,
                             env=script_environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: len(list(root.rglob("stage*/last.ckpt"))) >= 2, 600, "both cells' first epoch", sweep)
    by_defense = {metrics_dir.parent.name: metrics_dir for metrics_dir in cells(root).values()}
    jobs = {defense: job_of(directory)["job_id"] for defense, directory in by_defense.items()}
    subprocess.run(["scontrol", "requeue", jobs["none"]], check=True)
    subprocess.run(["scancel", "--signal=USR1", jobs["fast_adv_train"]], check=True)
    out, err = sweep.communicate(timeout=900)
    assert sweep.returncode == 0, (out + err)[-4000:]

    for defense, directory in by_defense.items():
        assert job_of(directory)["job_id"] == jobs[defense]  # the same job ran again: nothing resubmitted
        log = Path(job_of(directory)["stdout"]).read_text()
        assert "training: resuming from" in log, defense
    assert "Caught signal SIGUSR1" in Path(job_of(by_defense["fast_adv_train"])["stderr"]).read_text()
    assert not list(root.rglob("hpc_ckpt*"))  # Lightning's own SLURM requeue stayed out of it

    twins = local_twins(tmp_path / "local", *overrides)
    for directory in by_defense.values():
        got, expected = metrics(directory), twins[directory.name]
        for key in COMPARED:
            assert got[key] == expected[key], (directory.parent.name, key)
        for name, tensor in weights(expected).items():
            assert torch.equal(weights(got)[name], tensor), name


def test_a_killed_submitter_leaves_its_jobs_running_and_the_same_command_submits_only_what_is_missing(
        cluster, tmp_path):
    """SIGKILL the submitting process once its three jobs are queued (two run on the two CPUs, one waits), cancel
    the waiting one, and run the same command again: it follows the two jobs, submits only the cancelled cell,
    and each cell trains once."""
    command = script_command("train.py", *SLURM, *CELL, "seed=0,1,2", output_root=tmp_path)
    submitter = subprocess.Popen(command, cwd=ROOT, env=script_environment(), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, start_new_session=True)
    wait_for(lambda: len(cells(tmp_path)) == 3, 300, "three submitted cells", submitter)
    kill_session(submitter.pid)
    submitter.wait(timeout=60)
    first = {name: job_of(directory)["job_id"] for name, directory in cells(tmp_path).items()}
    wait_for(lambda: list(squeue().values()).count("RUNNING") == 2, 120, "two running jobs")
    waiting = next(job for job, state in squeue().items() if state == "PENDING")
    subprocess.run(["scancel", waiting], check=True)

    again = subprocess.run(command, cwd=ROOT, env=script_environment(), capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    summary = re.search(r"3 cells; (\d) finished, (\d) queued or running, (\d) to submit", again.stdout + again.stderr)
    assert summary is not None and int(summary[1]) + int(summary[2]) == 2 and summary[3] == "1"
    second = {name: job_of(directory)["job_id"] for name, directory in cells(tmp_path).items()}
    changed = [name for name in first if first[name] != second[name]]
    assert len(changed) == 1 and first[changed[0]] == waiting
    assert all((directory / "metrics.json").is_file() for directory in cells(tmp_path).values())
    trained = list((tmp_path / "checkpoints").rglob("stage*/trained.json"))
    assert len(trained) == 3
    for directory in cells(tmp_path).values():  # each job trained its cell once, from the first epoch
        log = Path(job_of(directory)["stdout"]).read_text()
        assert "resuming from" not in log and "run already finished" not in log


def test_a_failed_cell_is_named_with_its_job_and_log_and_the_others_are_reported(cluster, tmp_path):
    """One cell of two diverges (optimizer.lr=1e9): the other finishes; the sweep's end names the failed cell,
    its job id, its log file and the error's last line, exits 2; the report lists the cell as missing."""
    result = run_script("train.py", *SLURM, *CELL, "optimizer.lr=0.1,1e9", output_root=tmp_path, timeout=900)
    assert result.returncode == 2, (result.stdout + result.stderr)[-3000:]
    found = cells(tmp_path)
    finished = [directory for directory in found.values() if (directory / "metrics.json").is_file()]
    assert len(found) == 2 and len(finished) == 1
    failed = next(directory for directory in found.values() if directory not in finished)
    job = job_of(failed)
    message = result.stderr[result.stderr.index("1 of 2 cells failed"):]
    line = next(line for line in message.splitlines() if "optimizer.lr=1000000000.0" in line)  # as Hydra writes 1e9
    assert f"job {job['job_id']}" in line and job["stderr"] in line and "diverged" in line.lower()
    assert Path(job["stderr"]).is_file()
    report = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), str(ROOT / "scripts" / "report.py"),
                             str(tmp_path / "runs")], capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-2000:]
    assert failed.name in report.stdout + report.stderr


def test_ddp_over_two_slurm_tasks_equals_a_single_device(cluster, tmp_path):
    """`evaluate -m hydra/launcher=slurm trainer=ddp trainer.devices=2` on the CPU: srun starts two tasks (gloo),
    whose numbers are exactly those of one process on the same checkpoint."""
    trained = run_script("train.py", *TINY, "logger=none", f"hydra.run.dir={tmp_path / 'train'}",
                         output_root=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    checkpoint = metrics(tmp_path / "train")["checkpoint"]
    evaluation = [f"ckpt_path={checkpoint}", "dataset=synthetic", "dataset.datamodule.eval_batch_size=48",
                  "eval.n_samples=100", "dataset.eps.linf=0.02", "dataset.eps.l2=0.2", "logger=none"]
    single = run_script("evaluate.py", *evaluation, f"hydra.run.dir={tmp_path / 'single'}", output_root=tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = run_script("evaluate.py", *SLURM, *evaluation, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                     "trainer.precision=32-true", output_root=tmp_path / "slurm", timeout=900)
    assert ddp.returncode == 0, (ddp.stdout + ddp.stderr)[-4000:]
    (directory,) = cells(tmp_path / "slurm").values()
    job = job_of(directory)
    assert job["request"]["tasks_per_node"] == 2 and job["request"]["gpus_per_node"] == 0
    logs = sorted(path.name for path in Path(job["stdout"]).parent.glob("*_log.out"))
    assert len(logs) == 2  # srun's two tasks, one log each
    expected, got = metrics(tmp_path / "single"), metrics(directory)
    assert 0.05 < expected["robust_acc"]["pgd_linf"] < expected["clean_acc"]  # a comparison that can tell
    for key in ("clean_acc", "n_clean", "n_eval", "robust_acc", "curves"):
        assert got[key] == expected[key], key
