"""The user's own code: their model, defense and attack in their own files and config directory, run as a user
types it, labelled by their names, keyed by their code, and held to the threat model."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, compose_config, script_environment

from robustlab.attacks.base import Attack, outside_threat_model
from robustlab.attacks.cascade import WorstCase
from robustlab.attacks.pgd import PGD
from robustlab.code_digests import PRESENTATION, code_modules, module_digest
from robustlab.defenses.base import Defense
from robustlab.errors import ConfigError
from robustlab.fingerprint import evaluation_modules

EXAMPLE = ROOT / "examples" / "own_code"
# The README's command, run from a copy of examples/own_code (any directory outside the repository): its
# arguments after `robustlab train`.
EXAMPLE_COMMAND = next(line for line in (ROOT / "README.md").read_text().splitlines()
                       if line.startswith("robustlab train model=tiny_cnn "))
EXAMPLE_COMMAND = EXAMPLE_COMMAND.split("#")[0].split()[2:]
QUICK = ["dataset=synthetic", "trainer.max_epochs=1", "eval=quick", "eval.n_samples=64", "logger=none"]


def run_in(directory: Path, *overrides: str, command: str = "train"):
    """`robustlab <command> <overrides>` run from `directory`, the user's project (no PYTHONPATH)."""
    import subprocess

    environment = {key: value for key, value in script_environment().items() if key != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-m", "robustlab", command, *overrides], cwd=directory, env=environment,
                          capture_output=True, text=True, timeout=600)


def user_directory(tmp_path: Path) -> Path:
    directory = tmp_path / "my_project"
    shutil.copytree(EXAMPLE, directory)
    return directory


def only_record(directory: Path) -> dict:
    records = sorted((directory / "outputs" / "runs").rglob("metrics.json"), key=lambda path: path.stat().st_mtime)
    return json.loads(records[-1].read_text())


# -- from the command line ------------------------------------------------------------------------------------
def test_the_examples_model_defense_and_attack_run_under_their_own_names(tmp_path):
    directory = user_directory(tmp_path)
    result = run_in(directory, *EXAMPLE_COMMAND, *QUICK)
    assert result.returncode == 0, result.stderr[-3000:]
    record = only_record(directory)
    assert (record["model"], record["defense"], record["attack"]) == ("tiny_cnn", "blur", "margin_pgd")
    assert record["targets"] == {"model": "mynet.TinyCNN", "defense": "mydefense.BlurFront"}
    assert list((directory / "outputs" / "runs" / "synthetic" / "tiny_cnn" / "blur").glob("margin_pgd-*/metrics.json"))
    assert "myattack" in record["evaluation_modules"]  # results keyed by the user's attack code
    assert record["threat_model"]["margin_pgd"]["violations"] == 0
    assert record["robust_acc"]["margin_pgd"] < record["clean_acc"]  # the user's attack did attack


def test_a_bare_target_override_is_labelled_by_its_class(tmp_path):
    directory = user_directory(tmp_path)
    (directory / "strongpgd.py").write_text("from robustlab.attacks import PGD\n\n\nclass StrongPGD(PGD):\n    pass\n")
    result = run_in(directory, "model._target_=mynet.TinyCNN", "~model.image_size", "~model.mean", "~model.std",
                    "attack._target_=strongpgd.StrongPGD", *QUICK)
    assert result.returncode == 0, result.stderr[-3000:]
    record = only_record(directory)
    assert (record["model"], record["attack"]) == ("TinyCNN", "StrongPGD")  # never basic_net / pgd_linf
    assert "StrongPGD" in record["robust_acc"] and "pgd_linf" not in record["robust_acc"]
    assert (directory / "outputs" / "runs" / "synthetic" / "TinyCNN" / "none").is_dir()


SWEEP_COMMAND = next(line for line in (ROOT / "README.md").read_text().splitlines()
                     if line.startswith("robustlab train -m model=tiny_cnn "))
SWEEP_COMMAND = SWEEP_COMMAND.split("#")[0].split()[2:]


@pytest.mark.slow  # four trainings (adversarial ones among them), about two minutes
def test_the_examples_sweep_against_the_zoo_and_its_report(tmp_path):
    directory = user_directory(tmp_path)
    swept = run_in(directory, *SWEEP_COMMAND, *QUICK)
    assert swept.returncode == 0, swept.stderr[-3000:]
    cells = [json.loads(Path(line.removeprefix("metrics: ")).read_text())
             for line in swept.stdout.splitlines() if line.startswith("metrics: ")]
    defenses = next(word for word in SWEEP_COMMAND if word.startswith("defense=")).split("=")[1].split(",")
    assert sorted(cell["defense"] for cell in cells) == sorted(defenses)
    assert {(cell["model"], cell["attack"]) for cell in cells} == {("tiny_cnn", "margin_pgd")}
    reported = run_in(directory, "outputs/runs", command="report")
    assert reported.returncode == 0, reported.stderr[-3000:]
    assert all(defense in reported.stdout for defense in defenses)


@pytest.mark.slow  # 4 runs, about a minute; the default suite keys the user's code in test_code_hash_* below
def test_editing_the_users_files_retrains_reevaluates_or_does_nothing(tmp_path):
    directory = user_directory(tmp_path)
    command = [*EXAMPLE_COMMAND, *QUICK]
    first = run_in(directory, *command)
    assert first.returncode == 0, first.stderr[-3000:]
    trained = only_record(directory)

    (directory / "myattack.py").write_text((directory / "myattack.py").read_text().replace(
        "2.5 * self.eps / steps", "2.0 * self.eps / steps"))
    attack_edit = run_in(directory, *command)
    assert attack_edit.returncode == 0, attack_edit.stderr[-3000:]
    reevaluated = only_record(directory)
    assert reevaluated["run_fingerprint"] != trained["run_fingerprint"]
    assert reevaluated["training_fingerprint"] == trained["training_fingerprint"] and reevaluated["training_reused"]

    (directory / "mynet.py").write_text((directory / "mynet.py").read_text() + "\n# a note\n")
    (directory / "notes.py").write_text("UNRELATED = 1\n")
    comment = run_in(directory, *command)
    assert comment.returncode == 0 and "run already finished" in comment.stdout

    model = directory / "mynet.py"
    model.write_text(model.read_text().replace("width: int = 16", "width: int = 8"))
    (directory / "conf" / "model" / "tiny_cnn.yaml").write_text(
        (directory / "conf" / "model" / "tiny_cnn.yaml").read_text().replace("width: 16\n", ""))
    model_edit = run_in(directory, *command)
    assert model_edit.returncode == 0, model_edit.stderr[-3000:]
    retrained = only_record(directory)
    assert retrained["training_fingerprint"] != trained["training_fingerprint"] and not retrained["training_reused"]


def test_a_target_that_cannot_be_imported_is_refused_naming_its_key_module_and_where(tmp_path):
    directory = user_directory(tmp_path)
    result = run_in(directory, "model=tiny_cnn", "model._target_=mynet.NoSuchNet", *QUICK)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "model._target_='mynet.NoSuchNet' cannot be imported" in result.stderr
    (directory / "conf" / "model" / "ghost.yaml").write_text("_target_: ghostmodule.Ghost\n")
    result = run_in(directory, "model=ghost", *QUICK)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "model._target_='ghostmodule.Ghost'" in result.stderr and "module 'ghostmodule'" in result.stderr
    assert str(directory) in result.stderr  # the project's directory is among those searched
    assert not (directory / "outputs" / "checkpoints").exists() or not list((directory / "outputs").rglob("*.ckpt"))


# -- the code key ---------------------------------------------------------------------------------------------
@pytest.fixture
def user_package(tmp_path, monkeypatch):
    """A user's files on Python's path: a model importing a helper package by a relative import, and an
    unrelated module."""
    (tmp_path / "ownpkg").mkdir()
    (tmp_path / "ownpkg" / "__init__.py").write_text("from .layers import Block\n")
    (tmp_path / "ownpkg" / "layers.py").write_text("from torch import nn\nfrom . import sizes\n\n\n"
                                                   "class Block(nn.Linear):\n    pass\n")
    (tmp_path / "ownpkg" / "sizes.py").write_text("WIDTH = 16\n")
    (tmp_path / "ownnet.py").write_text("from ownpkg import Block\n\n\nclass Net:\n    width = 16\n")
    (tmp_path / "ownunrelated.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_code_hash_keys_the_users_modules_by_content_and_installed_packages_by_version(user_package):
    modules = code_modules(["ownnet.Net"], [])
    assert {"ownnet", "ownpkg.layers", "ownpkg.sizes"} <= set(modules)  # a relative import followed
    assert "ownunrelated" not in modules
    assert modules["torch"] == f"torch=={torch.__version__.split('+')[0]}" or modules["torch"].startswith("torch==")
    before = modules["ownpkg.sizes"]
    (user_package / "ownpkg" / "sizes.py").write_text('"""Sizes."""\n# a comment\nWIDTH = 16  # the same\n')
    assert module_digest("ownpkg.sizes") == before  # documentation and comments change nothing
    (user_package / "ownpkg" / "sizes.py").write_text("WIDTH = 8\n")
    assert module_digest("ownpkg.sizes") != before


def test_code_that_only_presents_results_is_outside_the_key(tmp_path):
    cfg = compose_config(["dataset=synthetic"], tmp_path)
    modules = evaluation_modules(cfg)
    assert "robustlab.evaluation.engine" in modules and "robustlab.runs" in modules
    assert not PRESENTATION & set(modules)  # figures, TensorBoard, image grids, progress bars, the report


def test_bad_targets_in_python_name_the_key():
    from omegaconf import OmegaConf

    from robustlab.configuration import instantiate

    with pytest.raises(ConfigError, match=r"defense._target_='nowhere.Defense' cannot be imported"):
        instantiate(OmegaConf.create({"defense": {"_target_": "nowhere.Defense"}}).defense)


# -- the threat model ---------------------------------------------------------------------------------------
class Fixed(Attack):
    """Returns what it is told, whatever the image: for checking the checker."""

    def __init__(self, eps: float | None, norm: str = "linf", returns=None) -> None:
        self.eps, self.norm, self.eot_samples, self.returns = eps, norm, 1, returns

    def attack(self, model, x, y, draws):
        return self.returns(x)


def test_the_threat_model_check_per_image():
    x = torch.full((6, 1, 4, 4), 0.5)
    x_adv = x.clone()
    x_adv[1] += 0.1  # on the L∞ sphere: inside
    x_adv[1, 0, 0, 0] += 0.1 * 1e-6  # float rounding of ε: inside the tolerance
    x_adv[2] += 0.11  # outside the ball
    x_adv[3, 0, 0, 0] = float("nan")
    x_adv[4] = 0.5
    x_adv[4, 0, 0, 0] = 1.0 + 1e-3  # outside [0, 1] (and the ball)
    x_adv[5, 0, 0, 0] = 0.45  # inside
    bad, sizes = outside_threat_model(Fixed(0.1).balls(), x, x_adv)
    assert bad.tolist() == [False, False, True, True, True, False]
    assert float(sizes[2]) == pytest.approx(0.11)
    l2 = x.clone()
    l2[0, 0, 0, :2] += 0.3  # ‖δ‖₂ = 0.42 ≤ 0.5
    l2[1, 0, 0, :] += 0.3  # ‖δ‖₂ = 0.6 > 0.5
    assert outside_threat_model(Fixed(0.5, "l2").balls(), x, l2)[0].tolist()[:2] == [False, True]
    # An unbounded attack (eps: null) is only held to finite images in [0, 1].
    assert outside_threat_model(Fixed(None).balls(), x, x_adv)[0].tolist() == [False, False, False, True, True, False]
    # A cascade over both norms: each image in one of its attacks' balls.
    both = WorstCase({"linf": PGD(eps=0.1, norm="linf"), "l2": PGD(eps=0.5, norm="l2")})
    assert outside_threat_model(both.balls(), x, l2)[0].tolist()[:2] == [False, True]


class Cheat(PGD):
    """A deliberately cheating attack: noise far beyond its budget, so every image looks broken (configured as the
    PGD it claims to be)."""

    def attack(self, model, x, y, draws):
        return (x + 0.6 * torch.randn_like(x)).clamp(0, 1)


def test_a_cheating_attack_is_caught_and_its_images_count_as_not_broken(tmp_path):
    from robustlab.train import run

    cfg = compose_config(["dataset=synthetic", "trainer.max_epochs=1", "eval=quick", "eval.n_samples=64", "logger=none",
                          "attack._target_=test_own_code.Cheat", "eval.audit.enabled=false"], tmp_path)
    record = run(cfg)
    assert record.attack == "Cheat"
    assert record.threat_model["Cheat"]["violations"] == 64
    assert record.threat_model["Cheat"]["largest_perturbation"] > 0.5
    # Every image outside the ball was scored as the clean image: accuracy under the cheat is the clean
    # accuracy of those images, not the near-zero that noise of 0.6 would give.
    clean = [float(v) for v in record.per_image["clean"].split(",")]
    assert [float(v) for v in record.per_image["Cheat"].split(",")] == clean
    from robustlab.report.rows import collect_rows
    from robustlab.report.writing import threat_model_section

    assert "| none | Cheat | 64 |" in threat_model_section(collect_rows({"run": record}))


@pytest.mark.slow  # a ResNet-18 on the whole Fashion-MNIST test split on the CPU: minutes; the default suite runs
# the API in tests/test_external_models.py
def test_the_torchvision_example_runs_through_the_python_api(tmp_path):
    import subprocess

    directory = user_directory(tmp_path)
    result = subprocess.run([sys.executable, "evaluate_torchvision.py", "eval.n_samples=16", "eval.audit.n_samples=16",
                             "eval.audit.square_queries=20", "attack.steps=5"], cwd=directory,
                            env=script_environment(), capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((directory / "outputs" / "api" / "resnet18" / "metrics.json").read_text())
    assert record["model"] == "resnet18" and record["n_eval"] == 16 and record["n_clean"] == 10000
    assert "outside the threat model: 0" in result.stdout


class Grey(Attack):
    """An unbounded attack (`eps: None`): every image turned mid-grey. It takes and ignores the settings of the
    PGD config it replaces."""

    def __init__(self, eps=None, norm: str = "linf", **pgd_settings) -> None:
        self.eps, self.norm, self.eot_samples = None, norm, 1

    def attack(self, model, x, y, draws):
        return torch.full_like(x, 0.5)


def test_an_unbounded_attack_runs_through_the_evaluation_and_the_audit(tmp_path):
    from robustlab.train import run

    cfg = compose_config(["dataset=synthetic", "trainer.max_epochs=1", "eval=quick", "eval.n_samples=64",
                          "eval.audit.n_samples=32", "eval.audit.square_queries=20", "logger=tensorboard",
                          "attack._target_=test_own_code.Grey", "attack.eps=null"], tmp_path)
    record = run(cfg)
    assert record.threat_model["Grey"] == {"violations": 0, "non_finite": 0, "largest_perturbation": 0.0, "balls": [],
                                           "in_worst_case": False}  # unbounded: its own column only
    assert record.robust_acc["Grey"] <= 0.2 and record.audit  # grey images: about chance; the audit ran
    assert "Grey" not in record.curves  # no ε to scale: left out of the robustness curves


class NotADefense(torch.nn.Module):
    def __init__(self, **settings) -> None:
        super().__init__()


class NotAnAttack:
    def __init__(self, **settings) -> None:
        pass


class DefenseWithoutLoss(Defense):
    def __init__(self, **settings) -> None:
        super().__init__()


@pytest.mark.parametrize("override,fragment", [
    ("defense._target_=test_own_code.NotADefense", "built a NotADefense, not a defense"),
    ("defense._target_=test_own_code.DefenseWithoutLoss", "does not implement training_loss"),
    ("attack._target_=test_own_code.NotAnAttack",
     "attack._target_='test_own_code.NotAnAttack' built a NotAnAttack, not an attack"),
])
def test_a_class_that_misses_its_contract_is_refused_before_training(override, fragment, tmp_path):
    from robustlab.train import run

    cfg = compose_config(["dataset=synthetic", "trainer.max_epochs=1", "logger=none", override], tmp_path)
    with pytest.raises(ConfigError) as refused:
        run(cfg)
    assert fragment in str(refused.value)
    assert not list((tmp_path / "outputs").rglob("*.ckpt"))
