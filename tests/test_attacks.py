"""Attack contract and strength: every attack config, both norms, on a trained model."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import CONF, accuracy, compose_config, train_standard
from hydra.utils import instantiate

from robustlab.attacks import APGD, PGD, NoAttack, Square
from robustlab.attacks.norms import L2Ball, LinfBall
from robustlab.configuration import instantiate as instantiate_checked
from robustlab.data import SyntheticDataModule
from robustlab.errors import InvalidValue
from robustlab.models import BasicNet

ATTACK_OPTIONS = sorted(path.stem for path in (CONF / "attack").glob("*.yaml"))


@pytest.fixture(scope="module")
def data():
    datamodule = SyntheticDataModule(num_train=1024, num_test=256, val_size=64, batch_size=64,
                                     eval_batch_size=256)
    datamodule.setup()
    return datamodule


@pytest.fixture(scope="module")
def trained_model(data):
    """BasicNet trained to high clean accuracy on the synthetic data (a few seconds on CPU)."""
    torch.manual_seed(0)
    model = BasicNet(in_channels=1, image_size=28, num_classes=10, mean=[0.5], std=[0.25])
    return train_standard(model, data, epochs=5, lr=1e-3)


@pytest.fixture(scope="module")
def batch(data):
    x, y = data.test_set.tensors
    return x[:128], y[:128]


# The contract does not depend on an attack's size: the costliest run smaller here, by the overrides a user
# would type (their full size runs in tests/test_strong_attacks.py and the slow acceptance tests).
SMALLER = {"arc": ["attack.steps=3"], "arc_l2": ["attack.steps=3"],
           "fab_t": ["attack.steps=10", "attack.targets=3"], "fab_t_l2": ["attack.steps=10", "attack.targets=3"],
           "autoattack": ["attack.steps=10", "attack.square_queries=200"],
           "autoattack_l2": ["attack.steps=10", "attack.square_queries=200"],
           "a3": ["attack.steps=10", "attack.target_steps=10"], "a3_l2": ["attack.steps=10", "attack.target_steps=10"],
           "apgd_l1": ["attack.steps=20"], "apgd_t_l1": ["attack.steps=10", "attack.targets=3"],
           "fab_t_l1": ["attack.steps=10", "attack.targets=3"],
           "autoattack_l1": ["attack.steps=10", "attack.square_queries=200"], "sparse_rs": ["attack.queries=200"]}


def independent_size(norm: str, delta: torch.Tensor) -> torch.Tensor:
    """The perturbation's size in `norm`, written here from the definitions (L0: pixels with any channel changed)."""
    flat = delta.flatten(1)
    if norm == "linf":
        return flat.abs().max(dim=1).values
    if norm == "l2":
        return (flat ** 2).sum(dim=1).sqrt()
    if norm == "l1":
        return flat.abs().sum(dim=1)
    assert norm == "l0"
    return (delta != 0).any(dim=1).flatten(1).sum(dim=1).float()


def attack_from_config(option: str, tmp_path, *overrides: str):
    cfg = compose_config(["dataset=synthetic", f"attack={option}", *overrides], tmp_path)
    return instantiate(cfg.attack)


def test_trained_model_is_accurate(trained_model, batch):
    assert accuracy(trained_model, *batch) > 0.9


@pytest.mark.parametrize("option", ATTACK_OPTIONS)
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_attack_contract(option, mode, trained_model, batch, tmp_path):
    attack = attack_from_config(option, tmp_path, *SMALLER.get(option, []))
    x, y = batch
    x_before = x.clone()
    model = copy.deepcopy(trained_model).train(mode == "train")
    params_before = [p.clone() for p in model.parameters()]

    x_adv = attack(model, x, y)

    assert torch.equal(x, x_before), "the attack modified its input"
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and x_adv.device == x.device
    assert not x_adv.requires_grad
    assert torch.isfinite(x_adv).all()
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert attack.balls(), "a bounded attack declares its balls"
    sizes = {norm: independent_size(norm, x_adv - x) for norm, _ in attack.balls()}
    inside = torch.stack([sizes[norm] <= eps * (1 + 1e-5) + 1e-5 for norm, eps in attack.balls()]).any(dim=0)
    assert inside.all(), f"images outside every ball of {attack.balls()}"
    assert model.training == (mode == "train"), "the attack changed the model's mode"
    assert all(p.grad is None for p in model.parameters()), "the attack left parameter gradients"
    assert all(torch.equal(a, b) for a, b in zip(params_before, model.parameters()))


@pytest.mark.parametrize("option", [o for o in ATTACK_OPTIONS if o not in ("none", "worst_case")])
def test_zero_budget_returns_input(option, trained_model, batch, tmp_path):
    zero = ["attack.budgets.linf=0", "attack.budgets.l2=0", "attack.budgets.l1=0"] if option == "msd" \
        else ["attack.eps=0.0"]
    attack = attack_from_config(option, tmp_path, *zero)
    x, y = batch
    assert torch.equal(attack(trained_model, x, y), x)


def random_noise(norm: str, eps: float, x: torch.Tensor) -> torch.Tensor:
    """x moved by random noise using the whole budget (a corner of the L∞ ball, the L2 or L1 sphere, ε random
    pixels set to random values)."""
    if norm == "linf":
        return (x + eps * torch.randint(0, 2, x.shape).float().mul(2).sub(1)).clamp(0, 1)
    if norm in ("l2", "mixed"):  # a cascade over both dense norms: noise on its largest (L2) sphere
        return (x + L2Ball.project(torch.randn_like(x) * 10, eps)).clamp(0, 1)
    if norm == "l1":
        noise = torch.randn_like(x)
        return (x + noise * eps / noise.flatten(1).abs().sum(1).view(-1, 1, 1, 1)).clamp(0, 1)
    pixels = torch.rand(len(x), x[0, 0].numel()).argsort(dim=1)[:, :int(eps)]
    noisy = x.clone().flatten(2)
    noisy.scatter_(2, pixels[:, None].expand(-1, x.shape[1], -1), torch.rand(len(x), x.shape[1], int(eps)))
    return noisy.view_as(x)


@pytest.mark.parametrize("option", ["fgsm", "pgd_linf", "pgd_l2", "apgd_ce", "apgd_dlr", "square", "square_l2",
                                    "worst_case", "a3", "a3_l2", "pgd_l1", "apgd_l1", "pgd_l0", "sparse_rs",
                                    "square_l1"])
def test_attack_beats_random_noise_of_same_budget(option, trained_model, batch, tmp_path):
    attack = attack_from_config(option, tmp_path, *SMALLER.get(option, []))
    x, y = batch
    torch.manual_seed(0)
    noisy = random_noise(attack.norm, attack.eps, x)
    attacked = attack(trained_model, x, y)
    assert accuracy(trained_model, attacked, y) < accuracy(trained_model, noisy, y) - 0.2


def test_pgd_is_stronger_than_fgsm(trained_model, batch):
    x, y = batch
    torch.manual_seed(0)
    fgsm = PGD(eps=0.1, steps=1, step_size=0.1, random_start=False)
    pgd = PGD(eps=0.1, steps=20)
    assert accuracy(trained_model, pgd(trained_model, x, y), y) <= accuracy(trained_model, fgsm(trained_model, x, y), y)


@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("l2", 0.5)])
def test_restarts_keep_each_examples_worst_case(norm, eps, trained_model, batch):
    x, y = batch
    torch.manual_seed(0)
    once = PGD(eps=eps, norm=norm, steps=5, restarts=1)(trained_model, x, y)
    torch.manual_seed(0)  # the first restart replays the single run exactly
    thrice = PGD(eps=eps, norm=norm, steps=5, restarts=3)(trained_model, x, y)
    with torch.no_grad():
        fooled_once = trained_model(once).argmax(1) != y
        fooled_thrice = trained_model(thrice).argmax(1) != y
    assert (fooled_thrice | ~fooled_once).all(), "a restart lost an example the first run had fooled"
    assert fooled_thrice.sum() >= fooled_once.sum()


def test_default_step_size_is_two_and_a_half_eps_over_steps():
    assert PGD(eps=0.1, steps=20).step_size == pytest.approx(0.0125)


def test_identity_attack_returns_a_copy(trained_model, batch):
    x, y = batch
    x_adv = NoAttack()(trained_model, x, y)
    assert torch.equal(x_adv, x) and x_adv.data_ptr() != x.data_ptr()


@pytest.mark.parametrize("kwargs,field", [
    ({"eps": -0.1}, "eps"),
    ({"eps": 1.5, "norm": "linf"}, "eps"),
    ({"eps": 0.1, "steps": 0}, "steps"),
    ({"eps": 0.1, "norm": "l3"}, "norm"),
    ({"eps": 2.5, "norm": "l0"}, "eps"),
    ({"eps": 0.1, "restarts": 0}, "restarts"),
    ({"eps": 0.1, "step_size": -0.01}, "step_size"),
])
def test_invalid_parameters_are_rejected(kwargs, field):
    with pytest.raises(InvalidValue) as error:
        PGD(**kwargs)
    assert error.value.field == field


def test_invalid_value_names_the_full_config_key(tmp_path):
    cfg = compose_config(["dataset=synthetic", "defense=adv_train", "defense.attack.steps=0"], tmp_path)
    with pytest.raises(InvalidValue) as error:
        instantiate_checked(cfg.defense)
    assert error.value.key == "defense.attack.steps"
    assert "defense.attack.steps=0" in str(error.value) and "integer ≥ 1" in str(error.value)


@pytest.mark.parametrize("attack", [PGD(eps=0.1, steps=5, restarts=2), APGD(eps=0.1, steps=10),
                                    Square(eps=0.1, queries=20)], ids=["pgd", "apgd", "square"])
def test_an_attack_reports_its_progress_step_by_step(attack, trained_model, batch):
    """The evaluation's progress bar moves during a long attack: each step reports the fraction done."""
    x, y = batch
    seen = []
    attack.progress = seen.append
    try:
        attack(trained_model.eval(), x, y)
    finally:
        attack.progress = None
    assert len(seen) >= 5 and seen == sorted(seen) and seen[-1] == pytest.approx(1.0) and seen[0] > 0


def test_a_random_start_in_the_linf_ball_is_uniform_and_centred():
    """Four pixels from each 64 random bits: every level of [-ε, ε) is reachable, the sample is centred (the
    sign bit of each 16-bit level is random too) and its spread is a uniform's, ε/√3, in the input's dtype."""
    torch.manual_seed(0)
    like = torch.zeros(1000, 1, 28, 28)
    sample = LinfBall.random(like, 0.1)
    assert sample.shape == like.shape and sample.dtype == like.dtype
    assert float(sample.abs().max()) <= 0.1 + 1e-7  # ε itself, rounded to the dtype
    assert abs(float(sample.mean())) < 1e-3
    assert float(sample.std()) == pytest.approx(0.1 / 3 ** 0.5, rel=1e-2)
    assert len(sample.unique()) > 60000  # of the 2¹⁶ levels
    assert LinfBall.random(torch.zeros(5, 3, 7, 7, dtype=torch.float64), 0.5).dtype == torch.float64
