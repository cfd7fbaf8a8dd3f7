"""robustlab outside its checkout: the wheel, installed (not editable) into a fresh virtual environment, used from a
directory outside the repository with the user's own commands, each run as a subprocess.

Offline, the fresh environment takes robustlab's dependencies from this one (a .pth file naming its
site-packages: the torch wheels already installed) and robustlab itself from the wheel alone.
"""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT

TINY = ["dataset=synthetic", "trainer.max_epochs=1", "eval=quick", "eval.n_samples=32", "eval.audit.n_samples=16",
        "eval.audit.square_queries=50", "logger=tensorboard"]


def run(command: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run(command, cwd=cwd, env={**environment, "HYDRA_FULL_ERROR": "0"}, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """The wheel built from this checkout, installed into a fresh venv: {"wheel", "bin", "home"}."""
    base = tmp_path_factory.mktemp("install")
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(base / "dist"),
         str(ROOT)], cwd=base)
    wheel = next((base / "dist").glob("robustlab-*.whl"))
    venv = base / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=base)  # this pip installs into it
    packages = next(venv.glob("lib/python*/site-packages"))
    (packages / "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q", "--no-index",
         str(wheel)], cwd=base)
    home = base / "home"  # the user's directory, outside the repository
    home.mkdir()
    return {"wheel": wheel, "bin": venv / "bin", "home": home}


def test_the_wheel_holds_every_module_config_and_the_starter_project(installed):
    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    modules = {path.relative_to(ROOT / "src").as_posix() for path in (ROOT / "src").rglob("*.py")}
    assert "hydra_plugins/robustlab/__init__.py" in modules  # the SLURM launcher, where Hydra looks for launchers
    configs = {f"robustlab/conf/{path.relative_to(ROOT / 'conf').as_posix()}"
               for path in (ROOT / "conf").rglob("*.yaml")}
    starter = {f"robustlab/project_template/{path.relative_to(ROOT / 'examples' / 'own_code').as_posix()}"
               for path in (ROOT / "examples" / "own_code").rglob("*")
               if path.is_file() and path.suffix in (".py", ".yaml", ".md") and "outputs" not in path.parts}
    assert modules - names == set() and configs - names == set() and starter - names == set()
    assert any(name.endswith("entry_points.txt") for name in names)
    # Hydra's plugin scan finds the installed launcher (hydra/launcher=slurm instantiates it by this name).
    script = ("from hydra.core.plugins import Plugins; from hydra.plugins.launcher import Launcher; "
              "print(*(f'{c.__module__}.{c.__name__}' for c in Plugins.instance().discover(Launcher)))")
    found = run([str(installed["bin"] / "python"), "-c", script], cwd=installed["home"]).stdout.split()
    assert "hydra_plugins.robustlab.SlurmLauncher" in found


def test_a_user_starts_trains_evaluates_and_reports_from_their_own_directory(installed):
    robustlab, home = str(installed["bin"] / "robustlab"), installed["home"]
    run([robustlab, "new", "my_project"], cwd=home)
    project = home / "my_project"
    assert {"mynet.py", "mydefense.py", "myattack.py", "README.md"} <= {p.name for p in project.iterdir()}

    helped = run([str(installed["bin"] / "python"), "-m", "robustlab", "--help"], cwd=project).stdout
    assert "model" in helped and "basic_net*" in helped and "tiny_cnn" in helped  # robustlab's and the project's

    trained = run([robustlab, "train", "model=tiny_cnn", "defense=blur", "attack=margin_pgd", *TINY], cwd=project)
    metrics = Path(trained.stdout.strip().splitlines()[-1].removeprefix("metrics: "))
    record = json.loads(metrics.read_text())
    assert metrics.is_relative_to(project / "outputs" / "runs" / "synthetic" / "tiny_cnn" / "blur")
    assert record["targets"] == {"model": "mynet.TinyCNN", "defense": "mydefense.BlurFront"}
    assert "myattack" in record["evaluation_modules"] and "margin_pgd" in record["robust_acc"]

    evaluated = run([robustlab, "evaluate", f"ckpt_path={record['checkpoint']}", "attack=fgsm", *TINY[2:]],
                    cwd=project)
    again = json.loads(Path(evaluated.stdout.strip().splitlines()[-1].removeprefix("metrics: ")).read_text())
    assert again["clean_acc"] == record["clean_acc"] and "fgsm" in again["robust_acc"]

    reported = run([robustlab, "report", "outputs"], cwd=project)
    assert "blur" in reported.stdout and (project / "outputs" / "report" / "REPORT.md").is_file()

    (project / "theirs.py").write_text(
        "import torch\nfrom torch import nn\n\n\nclass Theirs(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n"
        "        self.net = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))\n\n"
        "    def forward(self, x):\n        return self.net(x)\n")
    script = ("import json, sys, torch, robustlab\nfrom theirs import Theirs\n"
              "torch.manual_seed(0)\nx, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))\n"
              "record = robustlab.evaluate_model(Theirs(), x, y, dataset='synthetic', "
              "overrides=['eval=quick', 'eval.audit.n_samples=8', 'eval.audit.square_queries=20'])\n"
              f"predictor = robustlab.load_predictor({record['checkpoint']!r})\n"
              "print(json.dumps({'model': record.model, 'clean': record.clean_acc, 'n': record.n_eval, "
              "'predictor': type(predictor).__name__, 'where': robustlab.__file__}))\n")
    shown = run([str(installed["bin"] / "python"), "-c", script], cwd=project)  # where mynet.py is, for the ckpt
    result = json.loads(shown.stdout.strip().splitlines()[-1])
    assert result["model"] == "Theirs" and 0 <= result["clean"] <= 1
    assert Path(result["where"]).is_relative_to(installed["bin"].parent)  # the wheel's robustlab, not the checkout
