"""Results know which code made them: provenance in every record, fingerprints that follow the code, a report
that refuses to mix versions."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY
from test_report import EVALUATION_MODULES, sweep, write_cell

from robustlab.code_digests import _without_docstrings, code_hash, module_closure, target_module
from robustlab.provenance import device_name
from robustlab.report import write_report
from robustlab.report.reading import MixedVersions

SOURCE = ROOT / "src" / "robustlab"


def run_with_package(package_root: Path, output_root: Path, *overrides: str) -> subprocess.CompletedProcess:
    """`python train.py ...` importing robustlab from `package_root` (a copy the test may edit)."""
    env = {**os.environ, "PYTHONPATH": str(package_root), "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, str(ROOT / "train.py"), f"paths.output_root={output_root}", *TINY,
                           "logger=none", "trainer.max_epochs=1", *overrides],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def metrics_path(result: subprocess.CompletedProcess) -> Path:
    return Path(result.stdout.strip().splitlines()[-1].removeprefix("metrics: "))


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{path.name} no longer holds {old!r}: update the test"
    path.write_text(text.replace(old, new, 1))


def test_every_record_carries_its_provenance(tmp_path):
    result = run_with_package(ROOT / "src", tmp_path, f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    record = metrics["provenance"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                capture_output=True, text=True).stdout.strip())
    assert record["git_commit"] == head and record["git_dirty"] is dirty
    assert record["robustlab"] == metadata.version("robustlab")
    assert (record["torch"], record["pytorch_lightning"], record["hydra"]) == \
        (metadata.version("torch"), metadata.version("pytorch-lightning"), metadata.version("hydra-core"))
    assert record["device"] == device_name("cpu") and record["precision"] == "32-true"
    assert record["command"].startswith("train.py ") and "trainer.max_epochs=1" in record["command"]
    assert len(metrics["evaluation_code"]) == 12 and "robustlab.attacks.pgd" in metrics["evaluation_modules"]
    assert f"torch=={metadata.version('torch')}" in (tmp_path / "run" / "packages.txt").read_text()
    checkpoint_dir = Path(metrics["checkpoint"]).parent
    trained = json.loads((checkpoint_dir / "trained.json").read_text())
    assert trained["code"] == metrics["training_code"] and trained["provenance"]["git_commit"] == head
    stored = torch.load(metrics["checkpoint"], map_location="cpu", weights_only=True)
    assert stored["provenance"]["git_commit"] == head and stored["robustlab"]["training_code"] == trained["code"]


@pytest.mark.slow  # 54 s, six runs; the default suite checks each record's code digests and what changes a hash
def test_a_changed_attack_re_evaluates_and_a_changed_model_retrains(tmp_path):
    package = tmp_path / "package"
    shutil.copytree(SOURCE, package / "robustlab", ignore=shutil.ignore_patterns("__pycache__"))
    outputs = tmp_path / "outputs"
    first = run_with_package(package, outputs)
    assert first.returncode == 0, first.stderr[-3000:]
    assert json.loads(metrics_path(first).read_text())["provenance"].get("package_sha256")  # not a checkout

    again = run_with_package(package, outputs)
    assert "run already finished" in again.stdout and metrics_path(again) == metrics_path(first)

    # Square runs in every evaluation (the audit) but not in training: a new result, the same trained model.
    edit(package / "robustlab" / "attacks" / "square.py", "    def __init__(", "    revision = 2\n\n    def __init__(")
    attack_changed = run_with_package(package, outputs)
    assert attack_changed.returncode == 0, attack_changed.stderr[-3000:]
    assert "run already finished" not in attack_changed.stdout and "training: reusing" in attack_changed.stdout
    assert metrics_path(attack_changed) != metrics_path(first)
    old, new = (json.loads(metrics_path(r).read_text()) for r in (first, attack_changed))
    assert new["checkpoint"] == old["checkpoint"] and new["training_code"] == old["training_code"]
    square = "robustlab.attacks.square"
    assert new["evaluation_modules"][square] != old["evaluation_modules"][square]

    # A comment or docstring is not a change of what the code does.
    edit(package / "robustlab" / "models" / "basic_net.py", '"""', '"""Reworded. ')
    assert "run already finished" in run_with_package(package, outputs).stdout

    # A model change trains again, into its own checkpoint directory ...
    edit(package / "robustlab" / "models" / "basic_net.py", "class BasicNet(", "REVISION = 2\n\n\nclass BasicNet(")
    model_changed = run_with_package(package, outputs)
    assert model_changed.returncode == 0, model_changed.stderr[-3000:]
    assert "training: reusing" not in model_changed.stdout
    retrained = json.loads(metrics_path(model_changed).read_text())
    assert Path(retrained["checkpoint"]).parent != Path(new["checkpoint"]).parent

    # ... unless the user asks to reuse a training of the same config by other code, which is said aloud.
    edit(package / "robustlab" / "models" / "basic_net.py", "REVISION = 2", "REVISION = 3")
    reused = run_with_package(package, outputs, "reuse=any_version")
    assert reused.returncode == 0, reused.stderr[-3000:]
    assert "trained by other code (reuse=any_version)" in reused.stdout


def test_reuse_takes_only_its_two_values(tmp_path):
    result = run_with_package(ROOT / "src", tmp_path, "reuse=always")
    assert result.returncode == 2
    assert "reuse='always' is not allowed: expected one of 'same_code', 'any_version'" in result.stderr


def test_documentation_and_comments_do_not_change_a_module_hash():
    plain = "def f(x):\n    return x + 1\n"
    documented = '"""Module."""\n# a comment\ndef f(x):\n    """Add one."""\n\n    return x + 1  # here\n'
    changed = "def f(x):\n    return x + 2\n"
    assert _without_docstrings(ast.parse(plain)) == _without_docstrings(ast.parse(documented))
    assert _without_docstrings(ast.parse(plain)) != _without_docstrings(ast.parse(changed))


def test_code_hash_follows_imports_to_the_defining_module():
    assert target_module("robustlab.attacks.PGD") == "robustlab.attacks.pgd"
    closure = module_closure([target_module("robustlab.attacks.PGD")])
    assert {"robustlab.attacks.pgd", "robustlab.attacks.norms", "robustlab.attacks.expectation"} <= closure
    assert "robustlab.attacks.square" not in closure and "robustlab.attacks" not in closure
    assert code_hash(["robustlab.attacks.PGD"], []) != code_hash(["robustlab.attacks.Square"], [])


# -- the report -------------------------------------------------------------------------------------------
def test_report_over_mixed_versions_stops_naming_the_results(tmp_path):
    sweep(tmp_path)
    write_cell(tmp_path, "trades", 0.79, {"fgsm": 0.7, "pgd_linf": 0.66, "worst_case": 0.6},
               modules={**EVALUATION_MODULES, "robustlab.attacks.pgd": "ffffffffffff"})
    with pytest.raises(MixedVersions) as refused:
        write_report(tmp_path)
    message = str(refused.value)
    assert "robustlab.attacks.pgd: version 0a1b2c3d4e5f in fashion_mnist/basic_net/adv_train/pgd_linf-0123" in message
    assert "version ffffffffffff in fashion_mnist/basic_net/trades/pgd_linf-0123/metrics.json" in message
    assert not (tmp_path / "report" / "REPORT.md").exists()
    text = write_report(tmp_path, versions="mix")["markdown"].read_text()
    assert "| trades |" in text


def test_report_script_refuses_a_mix_and_reports_the_current_results_on_request(tmp_path):
    sweep(tmp_path)
    script = [sys.executable, str(ROOT / "scripts" / "report.py"), str(tmp_path)]
    agreed = subprocess.run(script, capture_output=True, text=True, timeout=120)
    assert agreed.returncode == 0, agreed.stderr  # one version throughout: nothing to refuse
    write_cell(tmp_path, "trades", 0.79, {"fgsm": 0.7, "pgd_linf": 0.66, "worst_case": 0.6},
               modules=evaluation_modules_now())
    refused = subprocess.run(script, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "different versions of robustlab's evaluation code" in refused.stderr
    chosen = subprocess.run([*script, "--versions", "current"], capture_output=True, text=True, timeout=120)
    assert chosen.returncode == 0, chosen.stderr
    assert "| trades |" in chosen.stdout and "| adv_train |" not in chosen.stdout
    assert "Left out, evaluated by other versions of the code: fashion_mnist/basic_net/adv_train" in chosen.stdout


def evaluation_modules_now() -> dict[str, str]:
    from robustlab.code_digests import module_digest

    return {module: module_digest(module) for module in EVALUATION_MODULES}


def test_report_header_lists_versions_and_devices(tmp_path):
    text = write_report(sweep(tmp_path))["markdown"].read_text()
    assert "- evaluation code c0de00000001 (robustlab 0.1.0, source 065b4d4b562c, PyTorch 2.14.1): 3 result(s)" in text
    assert "- device AMD EPYC, 32-true precision: 3 result(s)" in text
