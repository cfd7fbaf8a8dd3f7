"""The README's measured figures, as tests: real Fashion-MNIST, default configs, minutes each.

Run with `.venv/bin/python -m pytest -m slow` (about 6 minutes on 2 CPU cores).
"""

from __future__ import annotations

import json
import time

import pytest

from conftest import DATA_DIR, run_script

pytestmark = pytest.mark.slow


def train(tmp_path, *overrides: str) -> tuple[dict, float]:
    started = time.perf_counter()
    result = run_script("train.py", f"hydra.run.dir={tmp_path}", f"paths.data_dir={DATA_DIR}", *overrides,
                        timeout=900, output_root=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((tmp_path / "metrics.json").read_text()), time.perf_counter() - started


def test_default_run_reaches_88_percent_in_3_minutes(tmp_path):
    metrics, seconds = train(tmp_path)
    assert seconds <= 180
    assert metrics["clean_acc"] >= 0.88


def test_pgd_adversarial_training_reaches_60_percent_robust_in_8_minutes(tmp_path):
    metrics, seconds = train(tmp_path, "defense=adv_train", "attack=pgd_linf")
    assert seconds <= 480
    assert metrics["clean_acc"] >= 0.73
    assert metrics["n_eval"] == 1000 and metrics["attacks"]["pgd_linf"]["steps"] == 20
    assert metrics["eps"]["linf"] == 0.1 and metrics["robust_acc"]["pgd_linf"] >= 0.60
