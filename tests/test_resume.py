"""Runs survive kills: a killed training resumes exactly, a finished run or training is never repeated."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY, compose_config, run_script, script_command, script_environment

import robustlab.train
from robustlab.attacks import PGD
from robustlab.models import BasicNet

# Slow enough per epoch (PGD-7 training) that a kill lands between the first checkpoint and the end.
RESUMABLE = ["dataset=synthetic", "dataset.datamodule.num_train=4096", "defense=adv_train", "trainer.max_epochs=4",
             "eval.n_samples=64", "logger=none"]


def metrics(directory: Path) -> dict:
    return json.loads((directory / "metrics.json").read_text())


def numbers(record: dict) -> dict:
    return {"clean_acc": record["clean_acc"], **record["robust_acc"]}


def kill_after_first_checkpoint(command: list[str], checkpoint_root: Path, run_dir: Path) -> None:
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.monotonic() + 300
    while not list(checkpoint_root.rglob("last.ckpt")):
        assert process.poll() is None, "the run ended before its first checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(0.2)  # let the checkpoint file be complete (Lightning writes it in one go)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (run_dir / "metrics.json").exists(), "the run finished before it could be killed"


@pytest.mark.slow  # 51 s; the default suite kills and resumes a training in tests/test_defenses.py (multi-stage)
def test_killed_training_resumes_and_ends_like_an_uninterrupted_run(tmp_path):
    uninterrupted, interrupted = tmp_path / "uninterrupted", tmp_path / "interrupted"
    for root in (uninterrupted, interrupted):
        root.mkdir()
    assert run_script("train.py", *RESUMABLE, f"hydra.run.dir={uninterrupted / 'run'}",
                      output_root=uninterrupted).returncode == 0

    command = [sys.executable, str(ROOT / "train.py"), f"paths.output_root={interrupted}", *RESUMABLE,
               f"hydra.run.dir={interrupted / 'run'}"]
    kill_after_first_checkpoint(command, interrupted / "checkpoints", interrupted / "run")
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "training: resuming from" in result.stdout

    resumed, reference = metrics(interrupted / "run"), metrics(uninterrupted / "run")
    assert resumed["resumed_from"] and resumed["resumed_from"].endswith("last.ckpt")
    assert reference["resumed_from"] is None  # a first run has nothing to resume and starts cleanly
    assert resumed["epochs"] == reference["epochs"] == 4
    for key, value in numbers(reference).items():
        assert abs(numbers(resumed)[key] - value) <= 1e-6, key


def test_a_sweep_stopped_by_sigterm_during_training_fails_and_says_so(tmp_path):
    """`kill <pid>` (a scheduler's preemption) during a multirun's training: Lightning turns SIGTERM into a
    SystemExit with status 0, which would end the sweep as if it had finished. The command exits with 143 and
    says that the run did not finish; the training's last checkpoint stays for the same command to resume."""
    command = [*script_command("train.py", "-m", *RESUMABLE, output_root=tmp_path)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=script_environment())
    deadline = time.monotonic() + 300
    while not list(tmp_path.rglob("last.ckpt")):
        assert process.poll() is None, "the sweep ended before its first checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "robustlab: stopped by SIGTERM before the run finished" in stderr
    assert not list(tmp_path.rglob("metrics.json")) and list(tmp_path.rglob("last.ckpt"))


def test_finished_run_is_skipped_and_training_is_reused_for_a_new_budget(tmp_path):
    first = compose_config([*TINY, "logger=none"], tmp_path / "a")
    results = robustlab.train.run(first)
    before = (tmp_path / "a" / "metrics.json").stat().st_mtime_ns

    again = robustlab.train.run(compose_config([*TINY, "logger=none"], tmp_path / "a"))
    assert again == results  # the same record, read back instead of recomputed
    assert (tmp_path / "a" / "metrics.json").stat().st_mtime_ns == before  # nothing redone

    # A new evaluation budget only re-evaluates: same training fingerprint, same checkpoint.
    robustlab.train.run(compose_config([*TINY, "logger=none", "attack.eps=0.05",
                                        f"paths.output_root={tmp_path / 'a'}/outputs"], tmp_path / "b"))
    original, rebudgeted = metrics(tmp_path / "a"), metrics(tmp_path / "b")
    assert rebudgeted["training_reused"] and rebudgeted["checkpoint"] == original["checkpoint"]
    assert rebudgeted["run_fingerprint"] != original["run_fingerprint"]
    assert rebudgeted["attacks"]["pgd_linf"]["eps"] == 0.05


@pytest.mark.slow  # 47 s; the default suite re-runs a sweep in tests/test_report.py and reuses a training above
def test_sweep_rerun_skips_finished_cells_and_retrains_only_for_training_keys(tmp_path):
    sweep = ["-m", *TINY, "logger=none", "attack=fgsm,pgd_l2"]
    first = run_script("train.py", *sweep, output_root=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    cells = sorted(tmp_path.glob("runs/synthetic/basic_net/none/*/metrics.json"))
    assert len(cells) == 2
    assert first.stdout.count("training: reusing") == 1  # the second cell reuses the first one's training

    # A killed sweep: one cell lost its result. The rerun redoes that cell only, without retraining.
    cells[1].unlink()
    rerun = run_script("train.py", *sweep, output_root=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert rerun.stdout.count("run already finished") == 1 and rerun.stdout.count("training: reusing") == 1
    assert cells[1].exists()

    # A training key changes the training fingerprint: new training, new cells.
    retrained = run_script("train.py", *sweep, "optimizer.lr=0.002", output_root=tmp_path)
    assert retrained.returncode == 0
    assert retrained.stdout.count("training: reusing") == 1  # once, by the second cell of the new training
    assert len(list(tmp_path.glob("checkpoints/synthetic/basic_net/none/*/trained.json"))) == 2


def test_same_seed_gives_identical_metrics(tmp_path):
    first = robustlab.train.run(compose_config([*TINY, "logger=none"], tmp_path / "one"))
    second = robustlab.train.run(compose_config([*TINY, "logger=none"], tmp_path / "two"))
    assert numbers({"clean_acc": first.clean_acc, "robust_acc": first.robust_acc}) == \
        numbers({"clean_acc": second.clean_acc, "robust_acc": second.robust_acc})


def test_adversarial_examples_are_deterministic_for_a_seed_and_change_with_it():
    model = BasicNet(in_channels=1, image_size=28, num_classes=10, mean=[0.5], std=[0.25]).eval()
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    attack = PGD(eps=0.1, steps=3)
    runs = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        runs.append(attack(model, x, y))
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])
