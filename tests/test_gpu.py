"""On a real GPU, the commands GPU users type, end to end (skipped where PyTorch sees no GPU: their CPU forms
are in test_trainers.py). The first GPU run of `trainer=gpu` crashed at the end of its evaluation (image
indices on the GPU indexing correctness on the CPU), which no CPU form could show."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import TINY, run_script

from robustlab.provenance import device_name

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")

# The whole zoo × eval=matrix, each piece small: one epoch of a few batches, few images, short attacks.
SMALL_MATRIX = ["dataset=synthetic", "trainer.max_epochs=1", "trainer.limit_train_batches=4", "logger=tensorboard",
                "eval.n_samples=64", "eval.audit.n_samples=32", "eval.audit.square_queries=50",
                "eval.attacks.apgd_ce.steps=10", "eval.attacks.square.queries=50", "eval.accuracy_draws=2",
                "eval.attacks.a3.steps=10", "eval.attacks.a3.target_steps=10",
                "eval.certify.n_samples=32", "eval.certify.n=200"]


def test_the_matrix_sweep_runs_on_the_gpu(tmp_path):
    """`python train.py sweep=matrix trainer=gpu`: every defense of the zoo trains and is evaluated (audit,
    certification, ARC, A3 and BPDA included) on the GPU, and the report is written."""
    result = run_script("train.py", "sweep=matrix", "trainer=gpu", *SMALL_MATRIX, output_root=tmp_path, timeout=1200)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    records = [json.loads(path.read_text()) for path in (tmp_path / "sweeps" / "matrix").rglob("metrics.json")]
    assert len(records) == 12
    for record in records:
        assert record["provenance"]["device"] == device_name("cuda:0")
        assert record["provenance"]["precision"] == "bf16-mixed"
        assert all(math.isfinite(accuracy) for accuracy in record["robust_acc"].values())
        assert all(check["violations"] == 0 for check in record["threat_model"].values())
    undefended = next(record for record in records if record["defense"] == "none")
    assert undefended["robust_acc"]["pgd_linf"] < undefended["clean_acc"]  # the attacks work under bf16 autocast
    assert (tmp_path / "sweeps" / "matrix" / "report" / "REPORT.md").exists()


def test_a_gpu_evaluation_agrees_with_the_cpu_one(tmp_path):
    """The same checkpoint evaluated on the CPU (fp32) and on the GPU (bf16 autocast): the same clean accuracy
    up to a few images whose margin bf16 flips, and the same robust accuracy up to the attacks' rounding."""
    trained = run_script("train.py", *TINY, "attack.eps=0.02", f"hydra.run.dir={tmp_path / 'cpu'}",
                         output_root=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    cpu = json.loads((tmp_path / "cpu" / "metrics.json").read_text())
    evaluated = run_script("evaluate.py", f"ckpt_path={cpu['checkpoint']}", "trainer=gpu", "attack.eps=0.02",
                           "eval.n_samples=64",
                           f"hydra.run.dir={tmp_path / 'gpu'}", output_root=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    gpu = json.loads((tmp_path / "gpu" / "metrics.json").read_text())
    assert gpu["provenance"]["device"] == device_name("cuda:0")
    assert cpu["clean_acc"] > 0.9 and 0.2 < cpu["robust_acc"]["pgd_linf"] < 0.9  # a comparison that can fail
    assert abs(gpu["clean_acc"] - cpu["clean_acc"]) <= 0.02
    for name, accuracy in cpu["robust_acc"].items():
        assert abs(gpu["robust_acc"][name] - accuracy) <= 0.08, name
