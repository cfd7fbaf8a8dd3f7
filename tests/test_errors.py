"""Bad input is refused before training, naming the full key, the value and what is allowed."""

from __future__ import annotations

from conftest import run_script


def assert_refused_before_training(result, tmp_path, *fragments: str, status: int = 2) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == status, output[-2000:]
    for fragment in fragments:
        assert fragment in output, f"{fragment!r} not in:\n{output[-2000:]}"
    assert not (tmp_path / "checkpoints").exists() and "Epoch 0" not in output


def test_unknown_option_gets_hydras_message(tmp_path):
    result = run_script("train.py", "defense=no_such_defense", f"hydra.run.dir={tmp_path}")
    assert_refused_before_training(result, tmp_path, "Could not find 'defense/no_such_defense'", "adv_train",
                                   status=1)


def test_negative_eps_is_refused(tmp_path):
    result = run_script("train.py", "dataset=synthetic", "attack.eps=-0.1", f"hydra.run.dir={tmp_path}")
    assert_refused_before_training(result, tmp_path, "robustlab: invalid configuration: attack.eps=-0.1 is not allowed",
                                   "a number ≥ 0")


def test_zero_steps_in_the_training_attack_is_refused(tmp_path):
    result = run_script("train.py", "dataset=synthetic", "defense=adv_train", "defense.attack.steps=0",
                        f"hydra.run.dir={tmp_path}")
    assert_refused_before_training(result, tmp_path, "defense.attack.steps=0", "an integer ≥ 1")


def test_dataset_root_without_data_is_refused(tmp_path):
    empty = tmp_path / "empty"
    result = run_script("train.py", f"paths.data_dir={empty}", "dataset.datamodule.system_dir=/nonexistent",
                        "dataset.datamodule.download=false", f"hydra.run.dir={tmp_path}")
    assert_refused_before_training(result, tmp_path, f"dataset.datamodule.root='{empty}'", "/nonexistent",
                                   "dataset-fashion-mnist", "download")
