"""Bad input is refused before any training, naming the full key, the value and what is allowed."""

from __future__ import annotations

import json
import re

import pytest
from conftest import TINY, compose_config, refusal, run_script
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import robustlab.evaluate
import robustlab.train
from robustlab.errors import CheckpointError, ConfigError


def assert_refused_before_training(result, tmp_path, *fragments: str, status: int = 2) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == status, output[-2000:]
    for fragment in fragments:
        assert fragment in output, f"{fragment!r} not in:\n{output[-2000:]}"
    assert not list(tmp_path.rglob("*.ckpt")) and "Epoch 0" not in output


# -- from the command line: robustlab's one-line message with exit status 2 ----------------------------------
def test_unknown_option_is_refused_with_the_options(tmp_path):
    result = run_script("train.py", "defense=no_such_defense", f"hydra.run.dir={tmp_path}", output_root=tmp_path)
    assert_refused_before_training(result, tmp_path, "robustlab: invalid configuration: defense='no_such_defense' is "
                                   "not allowed: expected one of adv_train, bit_depth")
    assert "Traceback" not in result.stderr


def test_negative_eps_is_refused(tmp_path):
    result = run_script("train.py", "dataset=synthetic", "attack.eps=-0.1", f"hydra.run.dir={tmp_path}",
                        output_root=tmp_path)
    assert_refused_before_training(result, tmp_path, "robustlab: invalid configuration: attack.eps=-0.1 is not allowed",
                                   "a number ≥ 0")


def test_zero_steps_in_the_training_attack_is_refused(tmp_path):
    result = run_script("train.py", "dataset=synthetic", "defense=adv_train", "defense.attack.steps=0",
                        f"hydra.run.dir={tmp_path}", output_root=tmp_path)
    assert_refused_before_training(result, tmp_path, "defense.attack.steps=0", "an integer ≥ 1")


def test_dataset_root_without_data_is_refused(tmp_path):
    empty = tmp_path / "empty"
    result = run_script("train.py", f"paths.data_dir={empty}", "dataset.datamodule.system_dir=/nonexistent",
                        "dataset.datamodule.download=false", f"hydra.run.dir={tmp_path}", output_root=tmp_path)
    assert_refused_before_training(result, tmp_path, f"dataset.datamodule.root='{empty}'", "/nonexistent",
                                   "dataset-fashion-mnist", "download")


def test_missing_mandatory_value_is_named(tmp_path):
    result = run_script("evaluate.py", f"hydra.run.dir={tmp_path}", output_root=tmp_path)
    assert_refused_before_training(result, tmp_path, "ckpt_path")


# -- in process: the same checks, faster --------------------------------------------------------------------
@pytest.mark.parametrize("override,fragments", [
    ("attack.eps=1.5", ["attack.eps=1.5", "≤ 1"]),
    ("attack.step_size=0", ["attack.step_size=0", "> 0"]),
    ("defense=adv_train defense.attack.step_size=-0.01", ["defense.attack.step_size=-0.01", "> 0"]),
    ("attack.norm=l3", ["attack.norm='l3'", "'linf', 'l2', 'l1', 'l0'"]),
    ("attack=apgd_l1 attack.norm=l0", ["attack.norm='l0'", "'linf', 'l2', 'l1'"]),
    ("eval.attacks.pgd_l2.restarts=0", ["eval.attacks.pgd_l2.restarts=0", "≥ 1"]),
    ("model.in_channels=3", ["model.in_channels=3", "dataset.channels=1"]),
    ("model.num_classes=5", ["model.num_classes=5", "dataset.num_classes=10"]),
    ("eval.n_samples=0", ["eval.n_samples=0", "-1"]),
    ("eval=matrix eval.attacks.a3.keep=0", ["eval.attacks.a3.keep=0", "(0, 1]"]),
    ("attack=a3 attack.rounds=0 attack.targets=0", ["attack.rounds=0", "would spend no iteration"]),
])
def test_bad_value_is_refused_before_training(override, fragments, tmp_path):
    cfg = compose_config([*TINY, *override.split()], tmp_path)
    with pytest.raises(ConfigError) as error:
        robustlab.train.run(cfg)
    for fragment in fragments:
        assert fragment in str(error.value)
    assert not list(tmp_path.rglob("*.ckpt"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("trained")
    robustlab.train.run(compose_config([*TINY, "trainer.max_epochs=1", "logger=none"], output_dir))
    return json.loads((output_dir / "metrics.json").read_text())["checkpoint"]


def evaluate(checkpoint, tmp_path, *overrides):
    cfg = compose_config([f"ckpt_path={checkpoint}", "eval.n_samples=32", "logger=none", *overrides], tmp_path,
                         config_name="evaluate")
    return robustlab.evaluate.run(cfg)


def test_checkpoint_from_another_dataset_is_refused(checkpoint, tmp_path):
    with pytest.raises(CheckpointError, match="trained with dataset synthetic.*dataset.name='cifar10'"):
        evaluate(checkpoint, tmp_path, "dataset=cifar10")


def test_checkpoint_of_another_model_is_refused(checkpoint, tmp_path):
    with pytest.raises(CheckpointError, match="trained with model basic_net.*_target_"):
        evaluate(checkpoint, tmp_path, "dataset=synthetic", "model=wide_resnet")


def test_truncated_checkpoint_is_refused(checkpoint, tmp_path):
    truncated = tmp_path / "truncated.ckpt"
    data = open(checkpoint, "rb").read()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot be read"):
        evaluate(truncated, tmp_path)


def test_file_that_is_not_a_checkpoint_is_refused(tmp_path):
    bogus = tmp_path / "notes.ckpt"
    bogus.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read"):
        evaluate(bogus, tmp_path)


def test_non_finite_loss_stops_training_with_a_clear_error(tmp_path):
    result = run_script("train.py", *TINY, "optimizer=sgd", "optimizer.lr=1e12", "trainer.max_epochs=1",
                        f"hydra.run.dir={tmp_path}", output_root=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-2000:]
    assert "robustlab: train/loss is nan" in output or "robustlab: train/loss is inf" in output
    assert "optimizer.lr" in output
    assert not (tmp_path / "metrics.json").exists()
    for log_dir in {path.parent for path in (tmp_path / "tensorboard").rglob("events.out.tfevents.*")}:
        events = EventAccumulator(str(log_dir))
        events.Reload()
        assert not [tag for tag in events.Tags()["scalars"]
                    if tag.startswith(("verdict/", "hparams/", "robust_acc/", "test/"))]


@pytest.mark.parametrize("value", ["''", "[]", "abc", "-0.1"])
def test_a_budget_that_is_not_a_number_is_refused_naming_its_key(value, tmp_path):
    """`attack.eps` is checked where it is written, before `${multiply:...,${..eps}}` (the torchattacks step)
    resolves it into a traceback (found by tests/test_config_fuzz.py)."""
    refused = refusal(["dataset=synthetic", "attack=torchattacks", f"attack.eps={value}"], tmp_path)
    assert re.match(r"^attack\.eps=.* is not allowed: expected a number ≥ 0, or null", str(refused)), refused
