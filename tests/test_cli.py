"""The `robustlab` command as a user types it (`python -m robustlab`, the console script's module) from a project
directory outside the repository: its help, Hydra's own options, and bad input refused before anything runs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, script_environment

EXAMPLE = ROOT / "examples" / "own_code"


def robustlab(directory: Path, *arguments: str) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in script_environment().items() if key != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-m", "robustlab", *arguments], cwd=directory, env=environment,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def project(tmp_path) -> Path:
    directory = tmp_path / "my_project"
    shutil.copytree(EXAMPLE, directory, ignore=shutil.ignore_patterns("outputs", "__pycache__"))
    return directory


def test_help_lists_each_group_with_robustlabs_options_and_the_projects(project):
    result = robustlab(project, "--help")
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.startswith("  ")}
    assert "basic_net*" in lines["model"] and "tiny_cnn" in lines["model"]  # the default marked, the project's
    assert "blur" in lines["defense"] and "adv_train" in lines["defense"] and "margin_pgd" in lines["attack"]
    assert all(command in result.stdout for command in ("robustlab train", "robustlab evaluate", "robustlab report",
                                                         "robustlab new"))
    task_help = robustlab(project, "train", "--help")
    assert task_help.returncode == 0 and "tiny_cnn" in task_help.stdout and "basic_net" in task_help.stdout


def test_hydras_options_see_the_projects_configs(project):
    job = robustlab(project, "train", "model=tiny_cnn", "defense=blur", "--cfg", "job")
    assert job.returncode == 0, job.stderr
    assert "_target_: mynet.TinyCNN" in job.stdout and "_target_: mydefense.BlurFront" in job.stdout
    info = robustlab(project, "train", "--info", "searchpath")
    assert info.returncode == 0 and str(project / "conf") in info.stdout
    unknown = robustlab(project, "train", "model=no_such_net")
    assert unknown.returncode != 0
    assert "no_such_net" in unknown.stderr and "tiny_cnn" in unknown.stderr and "basic_net" in unknown.stderr


def test_a_yaml_that_does_not_parse_is_refused_with_its_file_and_line(project):
    broken = project / "conf" / "model" / "broken.yaml"
    broken.write_text("_target_: mynet.TinyCNN\nwidth: [16, 32\nnum_classes: 10\n")
    result = robustlab(project, "train", "model=tiny_cnn")
    assert result.returncode == 2
    assert f"{broken}, line " in result.stderr and "not valid YAML" in result.stderr
    assert not (project / "outputs").exists()


def test_an_option_named_like_a_builtin_one_is_refused_naming_both(project):
    (project / "conf" / "model" / "basic_net.yaml").write_text("_target_: mynet.TinyCNN\n")
    result = robustlab(project, "train", "model=tiny_cnn")
    assert result.returncode == 2
    assert str(project / "conf" / "model" / "basic_net.yaml") in result.stderr
    assert "robustlab's model=basic_net" in result.stderr and "rename yours" in result.stderr
    assert not (project / "outputs").exists()


def test_new_writes_a_project_and_refuses_a_non_empty_directory(tmp_path):
    result = robustlab(tmp_path, "new", "fresh")
    assert result.returncode == 0, result.stderr
    written = {path.relative_to(tmp_path / "fresh").as_posix() for path in (tmp_path / "fresh").rglob("*")
               if path.is_file()}
    assert {"README.md", "mynet.py", "mydefense.py", "myattack.py", "conf/model/tiny_cnn.yaml",
            "conf/defense/blur.yaml", "conf/attack/margin_pgd.yaml"} <= written
    assert not any("__pycache__" in name or name.startswith("outputs") for name in written)
    readme = (tmp_path / "fresh" / "README.md").read_text()
    assert "robustlab train model=tiny_cnn" in readme and "robustlab report" in readme and "-m" in readme
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine\n")
    refused = robustlab(tmp_path, "new", "busy")
    assert refused.returncode == 2 and "not empty" in refused.stderr
    assert [path.name for path in (tmp_path / "busy").iterdir()] == ["notes.txt"]
