"""Every option of every config group composes and instantiates."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from conftest import CONF, compose_config
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict, read_write

from robustlab.builders import build_classifier, build_trainer

GROUPS = {group.name: sorted(path.stem for path in group.glob("*.yaml"))
          for group in sorted(CONF.iterdir()) if group.is_dir() and group.name not in {"hydra", "paths"}}


def test_groups_named_by_the_design_exist():
    for group in ["dataset", "model", "attack", "defense", "trainer", "logger", "callbacks", "eval", "experiment"]:
        assert GROUPS.get(group), f"conf/{group}/ has no options"


@pytest.mark.parametrize("group,option", [(g, o) for g, options in GROUPS.items() for o in options])
def test_option_instantiates(group, option, tmp_path):
    if group == "experiment":
        overrides = [f"experiment={option}", "dataset=synthetic"]
    elif group == "dataset":
        overrides = [f"dataset={option}"]
    else:
        overrides = ["dataset=synthetic", f"{group}={option}"]
    if group == "trainer" and option in {"gpu", "ddp"} and not torch.cuda.is_available():
        # Everything but the device is still built and checked.
        overrides += ["trainer.accelerator=cpu", "trainer.devices=1"]
    cfg = compose_config(overrides, tmp_path)

    datamodule = instantiate(cfg.dataset.datamodule)  # real datasets are not loaded here, only built
    assert isinstance(datamodule, pl.LightningDataModule)
    classifier = build_classifier(cfg)
    x = torch.rand(2, cfg.dataset.channels, cfg.dataset.image_size, cfg.dataset.image_size)
    assert classifier.predictor()(x).shape == (2, cfg.dataset.num_classes)
    configured = classifier.configure_optimizers()
    optimizer = configured["optimizer"] if isinstance(configured, dict) else configured
    trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert trained == {id(p) for p in classifier.defense.trainable_parameters(classifier.model) if p.requires_grad}
    assert optimizer.param_groups[0]["lr"] == pytest.approx(cfg.optimizer.lr)
    trainer = build_trainer(cfg)
    assert trainer.max_epochs == cfg.trainer.max_epochs
    built = {type(callback).__name__ for callback in trainer.callbacks}
    assert {node._target_.rsplit(".", 1)[-1] for node in (cfg.get("callbacks") or {}).values() if node} <= built


def test_experiment_switches_the_training_attack(tmp_path):
    cfg = compose_config(["experiment=adv_train_fgsm", "dataset=synthetic"], tmp_path)
    defense = instantiate(cfg.defense)
    assert defense.attack.steps == 1 and defense.attack.step_size == pytest.approx(0.1)
    assert instantiate(cfg.attack).steps == 20  # the evaluation threat is untouched


def test_training_attack_is_overridable_from_the_command_line(tmp_path):
    cfg = compose_config(["dataset=synthetic", "defense=adv_train", "attack@defense.attack=pgd_l2"], tmp_path)
    assert instantiate(cfg.defense).attack.norm == "l2"


def test_dataset_budgets_match_the_design(tmp_path):
    expected = {"fashion_mnist": (0.1, 1.5), "mnist": (0.3, 2.0), "cifar10": (8 / 255, 0.5)}
    for dataset, (linf, l2) in expected.items():
        cfg = compose_config([f"dataset={dataset}"], tmp_path)
        assert cfg.dataset.eps.linf == pytest.approx(linf) and cfg.dataset.eps.l2 == pytest.approx(l2)
        assert instantiate(cfg.attack).eps == pytest.approx(linf)


@pytest.mark.parametrize("launcher,target", [("local_gpus", "hydra_plugins.hydra_joblib_launcher"),
                                             ("slurm", "hydra_plugins.robustlab.SlurmLauncher")])
def test_launcher_configs_compose(launcher, target, tmp_path):
    cfg = compose_config(["dataset=synthetic", f"hydra/launcher={launcher}"], tmp_path)
    assert cfg.hydra.launcher._target_.startswith(target)


def test_gpu_trainer_gives_each_job_of_a_sweep_its_own_device(tmp_path):
    cfg = compose_config(["dataset=synthetic", "trainer=gpu"], tmp_path)
    assert cfg.trainer.precision == "bf16-mixed"
    assert OmegaConf.is_missing(cfg.hydra.job, "num") and cfg.trainer.devices == 1  # a single run has no job number
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.job.num = 5  # job 5 of a multirun
    count = torch.cuda.device_count()
    assert cfg.trainer.devices == ([5 % count] if count >= 2 else 1)
