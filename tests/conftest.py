"""Shared fixtures: compose the real configs (as `python train.py ...` would) on tiny data, on CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hypothesis import settings
from omegaconf import open_dict

from robustlab.resolvers import register_resolvers

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
DATA_DIR = ROOT / "data"  # the real datasets' cache, shared with `python train.py`
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")

# pytest-xdist runs the suite in one worker per core (`-n auto`): each worker, and every command it starts,
# then computes on one thread, so the workers never ask for more threads than there are cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
else:
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
register_resolvers()  # as every entry point does before composing a config

# Property-based tests: the same few examples on every run by default (CI never flakes on a new draw);
# `--hypothesis-profile=thorough` draws many fresh ones.
settings.register_profile("default", max_examples=4, deadline=None, derandomize=True, database=None)
settings.register_profile("thorough", max_examples=200, deadline=None)
settings.load_profile("default")


def compose_config(overrides: list[str], output_dir: Path, config_name: str = "train"):
    """The config `python <config_name>.py <overrides>` would run, writing into `output_dir`.

    HydraConfig is set as in a real run, so `${hydra:...}` interpolations and the run's choices work.
    """
    GlobalHydra.instance().clear()
    overrides = [f"paths.output_root={output_dir}/outputs", *overrides]  # checkpoints stay inside the test
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.runtime.cwd = str(ROOT)
    HydraConfig.instance().set_config(cfg)
    return cfg


def refusal(overrides: list[str], output_dir: Path, config_name: str = "train", compose=None):
    """What the command says of `overrides` before anything runs, in process: the ConfigError of Hydra's
    composition against the schemas (worded by `composition_error`) or of `check_config` after it; None if both
    accept them. `compose(overrides)` replaces `compose_config` where a test composes faster."""
    from robustlab.errors import ConfigError
    from robustlab.validation import check_config, composition_refused

    try:
        with composition_refused(overrides):
            cfg = compose(overrides) if compose else compose_config(overrides, output_dir, config_name)
        check_config(cfg)
    except ConfigError as error:
        return error
    return None


@pytest.fixture
def compose_train(tmp_path):
    def _compose(*overrides: str):
        return compose_config(list(overrides), tmp_path)
    yield _compose
    GlobalHydra.instance().clear()


def script_command(script: str, *overrides: str, output_root: Path) -> list[str]:
    """`python <script> <overrides>` as a user types it, its outputs and checkpoints under `output_root`."""
    flags = [argument for argument in overrides if argument.startswith("-")]  # e.g. -m, before any override
    overrides = [argument for argument in overrides if not argument.startswith("-")]
    return [sys.executable, str(ROOT / script), *flags, f"paths.output_root={output_root}", *overrides]


def script_environment() -> dict:
    return {**os.environ, "HYDRA_FULL_ERROR": "0", "PYTHONUNBUFFERED": "1"}


def run_script(script: str, *overrides: str, output_root: Path, cwd: Path = ROOT,
               timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `python <script> <overrides>` as a user would, its outputs and checkpoints under `output_root`."""
    return subprocess.run(script_command(script, *overrides, output_root=output_root), cwd=cwd,
                          env=script_environment(), capture_output=True, text=True, timeout=timeout)


# Small, fast runs on the synthetic dataset; the audit on 32 images with a short Square (a later override of
# the same key wins, so a test that studies the audit sets its own).
TINY = ["dataset=synthetic", "trainer.max_epochs=2", "eval.n_samples=64", "logger=tensorboard",
        "eval.audit.n_samples=32", "eval.audit.square_queries=50"]


def train_standard(model: torch.nn.Module, datamodule, epochs: int, lr: float) -> torch.nn.Module:
    """A plain cross-entropy training loop (seeded), the model returned in eval mode."""
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        for x, y in datamodule.train_dataloader():
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    return model.eval()


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


@pytest.fixture(scope="session")
def noisy_synthetic():
    """Synthetic data noisy enough (σ = 0.3) that a trained model is right on most images but not robust."""
    from robustlab.data import SyntheticDataModule

    datamodule = SyntheticDataModule(num_train=1024, num_test=256, val_size=64, batch_size=64, eval_batch_size=256,
                                     noise=0.3)
    datamodule.setup()
    return datamodule


@pytest.fixture(scope="session")
def standard_net(noisy_synthetic):
    """BasicNet after 4 epochs of standard training on `noisy_synthetic`, in eval mode."""
    from robustlab.models import BasicNet

    torch.manual_seed(0)
    net = BasicNet(in_channels=1, image_size=28, num_classes=10, mean=[0.5], std=[0.25])
    return train_standard(net, noisy_synthetic, epochs=4, lr=1e-3)


@pytest.fixture(scope="session")
def robust_net(noisy_synthetic):
    """BasicNet after 2 epochs of standard training and 6 of PGD-5 L∞ adversarial training (ε = 0.03) on
    `noisy_synthetic`, in eval mode (about 88% clean, a third robust at ε = 0.03): a small model that resists
    attacks in part, for comparing attacks where they differ."""
    from robustlab.attacks import PGD
    from robustlab.models import BasicNet

    torch.manual_seed(0)
    net = BasicNet(in_channels=1, image_size=28, num_classes=10, mean=[0.5], std=[0.25])
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    attack = PGD(eps=0.03, steps=5)
    for epoch in range(8):
        for x, y in noisy_synthetic.train_dataloader():
            if epoch >= 2:
                net.eval()
                x = attack(net, x, y)
            net.train()
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            optimizer.step()
    return net.eval()
