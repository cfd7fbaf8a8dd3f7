"""Every command in the README's code blocks, run as a user types it (on tiny data, appended overrides only).

A command is taken from README.md itself, so a command added there without a test here fails
`test_every_readme_command_is_run_or_its_place_named`.
"""

from __future__ import annotations

import json
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from conftest import ROOT, compose_config, run_script, script_environment

from robustlab.evaluation.record import decode_per_image

pytestmark = pytest.mark.xdist_group("readme")  # one worker runs the module: its fixtures once

# Appended to every run, except where the command sets the key itself: tiny data, one epoch, few images.
TINY = ["dataset=synthetic", "trainer.max_epochs=1", "eval.n_samples=32", "eval.audit.n_samples=16",
        "eval.audit.square_queries=50", "logger=tensorboard"]
MATRIX_TINY = ["eval.attacks.apgd_ce.steps=10", "eval.attacks.square.queries=50", "eval.attacks.a3.steps=10",
               "eval.attacks.a3.target_steps=10"]

# Commands run by another test, as they are written in the README plus their CPU form.
ELSEWHERE = {
    "python train.py defense=randomized_smoothing":
        "tests/test_certification.py::test_randomized_smoothing_run_is_certified_and_checked",
    "python train.py trainer=gpu": "tests/test_trainers.py::test_gpu_trainer_single_run_in_its_cpu_form",
    "python train.py trainer=ddp": "tests/test_trainers.py::test_ddp_trains_once_and_evaluates_every_image_once",
    # On a cluster: the slow suite's real one-machine SLURM cluster, in its CPU form
    "python train.py sweep=matrix hydra/launcher=slurm":
        "tests/test_slurm.py::test_a_matrix_sweep_runs_through_sbatch_asking_for_what_each_cell_needs",
    "python train.py -m hydra/launcher=slurm trainer=ddp trainer.devices=4 defense=adv_train":
        "tests/test_slurm.py::test_ddp_over_two_slurm_tasks_equals_a_single_device",
    "bash scripts/slurm_local.sh start": "tests/test_slurm.py::cluster",
    "bash scripts/slurm_local.sh stop": "tests/test_slurm.py::cluster",
    "bash scripts/setup.sh && .venv/bin/ruff check . && .venv/bin/mypy && .venv/bin/lint-imports "
    "&& .venv/bin/python -m pytest":
        "tests/test_readme.py::test_ci_runs_the_readmes_test_command",
    # `python train.py` with the venv's Python (CI runs the setup first)
    "bash scripts/setup.sh && .venv/bin/python train.py": "tests/test_readme.py::test_train_commands",
    "python evaluate.py weights=weights.pt model=basic_net dataset=fashion_mnist":
        "tests/test_external_models.py::test_a_state_dict_gives_the_numbers_of_its_checkpoint",
    "python evaluate.py torchscript=model.pt dataset=fashion_mnist":
        "tests/test_external_models.py::test_a_torchscript_model_is_evaluated_as_it_is",
    # The robustlab command: from a wheel installed into a fresh venv, in a directory outside the repository
    "robustlab --help": "tests/test_cli.py::test_help_lists_each_group_with_robustlabs_options_and_the_projects",
    "robustlab train defense=adv_train":
        "tests/test_install.py::test_a_user_starts_trains_evaluates_and_reports_from_their_own_directory",
    "robustlab evaluate ckpt_path=outputs/checkpoints/.../last.ckpt attack=apgd_ce":
        "tests/test_install.py::test_a_user_starts_trains_evaluates_and_reports_from_their_own_directory",
    "robustlab report outputs/runs":
        "tests/test_install.py::test_a_user_starts_trains_evaluates_and_reports_from_their_own_directory",
    "robustlab new my_project && cd my_project":
        "tests/test_cli.py::test_new_writes_a_project_and_refuses_a_non_empty_directory",
    "robustlab train model=tiny_cnn defense=blur attack=margin_pgd":
        "tests/test_own_code.py::test_the_examples_model_defense_and_attack_run_under_their_own_names",
    "robustlab train -m model=tiny_cnn defense=blur,none,adv_train,trades attack=margin_pgd":
        "tests/test_own_code.py::test_the_examples_sweep_against_the_zoo_and_its_report",
    "python evaluate_torchvision.py":
        "tests/test_own_code.py::test_the_torchvision_example_runs_through_the_python_api",
}
# Commands no test can run here, and why.
NOT_RUN = {
    "pip install -e '.[scale]' --config-settings editable_mode=compat":
        "installs packages; scripts/setup.sh installs the dev extra (which includes scale) the same way",
    "python train.py -m hydra/launcher=slurm hydra.launcher.partition=gpu trainer=gpu defense=none,adv_train":
        "needs a SLURM cluster with GPUs (its config is composed below; tests/test_slurm.py runs the CPU cluster)",
    "python scripts/bench.py --device cuda --matrix":
        "needs a GPU (tests/test_performance.py runs --device cuda --tiny "
        "where one is present)",
}


def readme_commands() -> list[str]:
    """The shell commands of the README's bash blocks and the Python block, comments and continuations folded."""
    text = (ROOT / "README.md").read_text()
    commands = []
    for language, block in re.findall(r"```(\w+)\n(.*?)```", text, flags=re.DOTALL):
        if language == "python":
            commands.append(block.strip())
            continue
        if language != "bash":  # output shown as text, not commands
            continue
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                commands.append(" ".join(line.split()))
    return commands


def arguments(command: str) -> list[str]:
    return shlex.split(command)[2:]  # after `python <script>`


def with_tiny(command_arguments: list[str], extra: list[str] = ()) -> list[str]:
    """The command's own arguments, then each tiny override whose key the command does not set."""
    keys = {argument.lstrip("~+").split("=")[0] for argument in command_arguments}
    return [*command_arguments, *(override for override in [*TINY, *extra] if override.split("=")[0] not in keys)]


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result


def metrics_path(result: subprocess.CompletedProcess) -> Path:
    return Path(result.stdout.strip().splitlines()[-1].removeprefix("metrics: "))


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("readme")


def run_train(command: str, outputs: Path, *extra: str) -> subprocess.CompletedProcess:
    return ok(run_script("train.py", *with_tiny(arguments(command), list(extra)), output_root=outputs))


@pytest.fixture(scope="module")
def plain_run(outputs) -> Path:
    """`python train.py`: its metrics.json."""
    return metrics_path(run_train("python train.py", outputs))


@pytest.fixture(scope="module")
def mixture_run(outputs) -> Path:
    # One epoch per member, as TINY's trainer.max_epochs=1 is for every other run (the defense's own 8 win over it).
    return metrics_path(run_train("python train.py defense=random_mixture", outputs, "defense.epochs_per_member=1"))


def last_checkpoint(metrics: Path) -> Path:
    """The `.../last.ckpt` of the run's training (its last stage's, for a multi-stage defense)."""
    return Path(json.loads(metrics.read_text())["checkpoint"]).parent / "last.ckpt"


def readme_path(command: str, outputs: Path, checkpoint: Path | None = None) -> str:
    """The command with its placeholders made real: `outputs/` is the test's output root, `...` a checkpoint."""
    command = command.replace("outputs/checkpoints/.../last.ckpt", str(checkpoint))
    command = command.replace("ckpt_path=...", f"ckpt_path={checkpoint}")
    return command.replace("outputs/", f"{outputs}/")


def test_every_readme_command_is_run_or_its_place_named():
    tested = set(TRAIN_COMMANDS) | {EVALUATE_APGD, EVALUATE_CW, MATRIX, REPORT, TENSORBOARD, PYTHON_API, LOCAL_GPUS}
    assert set(readme_commands()) == tested | set(ELSEWHERE) | set(NOT_RUN)
    for place in ELSEWHERE.values():
        if "::" in place:
            path, name = place.split("::")
            assert f"def {name}(" in (ROOT / path).read_text(), place


TRAIN_COMMANDS = [
    "python train.py",
    "python train.py defense=adv_train attack=pgd_linf",
    "python train.py defense=adv_train attack@defense.attack=fgsm",
    "python train.py -m defense=none,adv_train attack=fgsm,pgd_linf,pgd_l2",
    "python train.py attack.steps=100 attack.restarts=5 eval.n_samples=-1",
    "python train.py defense=random_mixture",
    "python train.py defense=adv_train attack=apgd_l1",
    "python train.py defense=msd",
]


SLOW = {"python train.py -m defense=none,adv_train attack=fgsm,pgd_linf,pgd_l2",  # six cells
        "python train.py attack.steps=100 attack.restarts=5 eval.n_samples=-1"}  # PGD-100 × 5 on every image


@pytest.mark.parametrize("command", [pytest.param(command, marks=[pytest.mark.slow] if command in SLOW else [])
                                     for command in TRAIN_COMMANDS])
def test_train_commands(command, outputs, plain_run, mixture_run):
    words = dict(argument.split("=", 1) for argument in arguments(command) if "=" in argument)
    if command in ("python train.py", "python train.py defense=random_mixture"):
        metrics = plain_run if command == "python train.py" else mixture_run
    else:
        result = run_train(command, outputs)
        if "-m" in arguments(command):  # every cell of the sweep ran, once
            cells = [json.loads(Path(line.removeprefix("metrics: ")).read_text())
                     for line in result.stdout.splitlines() if line.startswith("metrics: ")]
            assert sorted((cell["defense"], cell["attack"]) for cell in cells) == sorted(
                (defense, attack) for defense in words["defense"].split(",") for attack in words["attack"].split(","))
            return
        metrics = metrics_path(result)
    record = json.loads(metrics.read_text())
    assert record["defense"] == words.get("defense", "none") and record["attack"] == words.get("attack", "pgd_linf")
    if "attack@defense.attack" in words:  # the checkpoint was built, and trained, with FGSM: one step of size ε
        trained_with = torch.load(record["checkpoint"], weights_only=True)["robustlab"]["defense"]["attack"]
        assert trained_with["steps"] == 1 and trained_with["step_size"] == trained_with["eps"]
        assert record["settings"]["defense.attack.steps"] == 1
    if "eval.n_samples" in words:
        assert record["n_eval"] == record["n_clean"] == 256  # the whole synthetic test split
        assert record["attacks"]["pgd_linf"]["restarts"] == 5


def test_ci_runs_the_readmes_test_command():
    """The first screen's test command is what CI runs, word for word."""
    command = next(line.split("  #")[0].strip() for line in (ROOT / "README.md").read_text().splitlines()
                   if "python -m pytest" in line and line.startswith("bash scripts/setup.sh"))
    assert command in (ROOT / ".ci" / "run").read_text()


EVALUATE_APGD = "python evaluate.py ckpt_path=outputs/checkpoints/.../last.ckpt attack=apgd_ce"
EVALUATE_CW = "python evaluate.py ckpt_path=... attack=torchattacks attack.name=CW attack.eps=null attack.norm=l2"


# The multi-stage case is slow (15 s); tests/test_defenses.py evaluates a multi-stage checkpoint whole by default.
@pytest.mark.parametrize("which", ["plain", pytest.param("multi-stage", marks=pytest.mark.slow)])
def test_evaluate_a_checkpoint_without_naming_its_dataset(which, outputs, plain_run, mixture_run):
    """The README's evaluate.py command takes the dataset from the checkpoint (no `dataset=`)."""
    trained = plain_run if which == "plain" else mixture_run
    command = readme_path(EVALUATE_APGD, outputs, last_checkpoint(trained))
    result = ok(run_script("evaluate.py", *arguments(command), "attack.steps=10", "eval.n_samples=32",
                           "eval.audit.n_samples=16", "eval.audit.square_queries=50", output_root=outputs))
    record = json.loads(metrics_path(result).read_text())
    assert record["dataset"] == "synthetic" and record["attack"] == "apgd_ce"
    assert record["defense"] == ("none" if which == "plain" else "random_mixture")
    assert record["clean_acc"] == json.loads(trained.read_text())["clean_acc"]  # the same weights, the same data


def test_evaluate_with_a_torchattacks_attack(outputs, plain_run):
    pytest.importorskip("torchattacks")
    command = readme_path(EVALUATE_CW, outputs, last_checkpoint(plain_run))
    result = ok(run_script("evaluate.py", *arguments(command), "attack.kwargs.steps=5", "eval.n_samples=32",
                           "eval.audit.n_samples=16", "eval.audit.square_queries=50", output_root=outputs))
    record = json.loads(metrics_path(result).read_text())
    described = record["attacks"]["torchattacks"]
    assert described["name"] == "CW" and described["eps"] is None and described["kwargs"]["alpha"] is None
    # CW broke images: on the same images, fewer are right under it than clean.
    clean = decode_per_image(record["per_image"]["clean"])
    attacked = decode_per_image(record["per_image"]["torchattacks"])
    assert sum(attacked) < sum(clean[:len(attacked)])


MATRIX = "python train.py sweep=matrix"
REPORT = "python scripts/report.py outputs/sweeps/matrix"


@pytest.mark.slow  # the whole zoo; tests/test_report.py runs sweep=matrix over two defenses by default
def test_matrix_sweep_and_its_report(outputs):
    """`python train.py sweep=matrix` over the whole zoo, then the report rebuilt from its files."""
    run_train(MATRIX, outputs, *MATRIX_TINY)
    report = outputs / "sweeps" / "matrix" / "report" / "REPORT.md"
    written = report.read_text()
    defenses = re.findall(r"^\| (\w+) \| \d", written, flags=re.MULTILINE)
    zoo = set((ROOT / "conf" / "sweep" / "zoo.yaml").read_text().split("defense: ")[1].split()[0].split(","))
    assert zoo <= set(defenses)
    # Every shipped attack of eval=matrix stayed inside its threat model, on every defense of the zoo.
    checked = [json.loads(path.read_text())["threat_model"]
               for path in (outputs / "sweeps" / "matrix").rglob("metrics.json")]
    assert len(checked) >= len(zoo) and all(check["violations"] == 0 for record in checked for check in record.values())
    assert "Every attack stayed inside its threat model" in written
    result = ok(subprocess.run([sys.executable, *shlex.split(readme_path(REPORT, outputs))[1:]], cwd=ROOT,
                               env=script_environment(), capture_output=True, text=True, timeout=300))
    assert report.read_text() == written and "| random_mixture |" in result.stdout


TENSORBOARD = "tensorboard --logdir outputs/tensorboard"


def test_tensorboard_serves_the_runs(outputs, plain_run):
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        port = probe.getsockname()[1]
    command = [Path(sys.executable).parent / "tensorboard", *shlex.split(readme_path(TENSORBOARD, outputs))[1:],
               "--port", str(port), "--host", "localhost"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        runs, deadline = [], time.monotonic() + 90
        while time.monotonic() < deadline and not runs:
            try:
                runs = json.loads(urllib.request.urlopen(f"http://localhost:{port}/data/runs", timeout=5).read())
            except OSError:
                time.sleep(1)
        assert f"none/pgd_linf-{json.loads(plain_run.read_text())['run_fingerprint']}" in runs, runs  # short names
    finally:
        server.terminate()
        server.wait(timeout=30)


PYTHON_API = readme_commands()[[i for i, c in enumerate(readme_commands()) if c.startswith("import robustlab")][0]]


def test_python_api_block(outputs, plain_run):
    code = readme_path(PYTHON_API, outputs, last_checkpoint(plain_run))
    script = (f"import torch\nimages, labels = torch.rand(4, 1, 28, 28), torch.arange(4)\n{code}\n"
              "assert logits.shape == (4, 10) and record.n_eval == 4\n"
              "assert record.threat_model['pgd_linf']['violations'] == 0\n"
              "print('ok')")
    assert ok(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT,
                             timeout=300)).stdout.strip().splitlines()[-1] == "ok"


LOCAL_GPUS = ("python train.py -m hydra/launcher=local_gpus hydra.launcher.n_jobs=4 trainer=gpu defense=none,adv_train "
              "attack=fgsm,pgd_linf")


@pytest.mark.slow  # four jobs; tests/test_trainers.py runs the launcher in the default suite
def test_local_gpus_launcher_command_in_its_cpu_form(outputs):
    result = run_train(LOCAL_GPUS, outputs, "trainer.accelerator=cpu")
    assert result.stdout.count("metrics: ") == 4


def test_slurm_command_composes(tmp_path):
    command = [c for c in NOT_RUN if "launcher=slurm" in c][0]
    overrides = [argument for argument in arguments(command) if argument != "-m" and "," not in argument]
    cfg = compose_config(overrides, tmp_path)
    assert cfg.hydra.launcher._target_ == "hydra_plugins.robustlab.SlurmLauncher"
    assert cfg.hydra.launcher.partition == "gpu"
