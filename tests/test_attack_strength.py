"""Evaluation checks after the trusted libraries' own suites and Carlini et al. 2019: attacks are as strong
as they should be, and the evaluation reports what the attack earned."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import DATA_DIR, FASHION_MNIST_SYSTEM_DIR, TINY, accuracy, compose_config, train_standard
from torch import nn

from robustlab.attacks import PGD
from robustlab.builders import build_classifier, build_datamodule, build_evaluation, build_runtime
from robustlab.data import FashionMNISTDataModule
from robustlab.models import BasicNet

pytestmark = pytest.mark.xdist_group("attack_strength")  # one worker runs the module: its fixtures once


@pytest.fixture(scope="module")
def fashion():
    datamodule = FashionMNISTDataModule(root=str(DATA_DIR), system_dir=str(FASHION_MNIST_SYSTEM_DIR))
    datamodule.setup()
    return datamodule


@pytest.fixture(scope="module")
def standard_model(fashion):
    """BasicNet with standard training on real Fashion-MNIST (6 epochs, ~88% clean; about 15 s on 2 cores)."""
    torch.manual_seed(0)
    model = BasicNet(in_channels=1, image_size=28, num_classes=10, mean=[0.286], std=[0.353])
    return train_standard(model.to(memory_format=torch.channels_last), fashion, epochs=6, lr=2e-3)


@pytest.fixture(scope="module")
def test_batch(fashion):
    x, y = fashion.test_set.tensors
    return x[:500], y[:500]


def test_standard_model_is_trained(standard_model, test_batch):
    assert accuracy(standard_model, *test_batch) > 0.8


def test_t3_pgd_breaks_a_standard_model(standard_model, test_batch):
    torch.manual_seed(0)
    assert accuracy(standard_model, PGD(eps=0.1)(standard_model, *test_batch), test_batch[1]) <= 0.05


class LinearMargin(nn.Module):
    """Two classes, logit gap w·(x − 0.5) + m·‖w‖_dual: every point at x = 0.5 is exactly `margin` from the
    boundary in the attack's norm (‖w‖₁ is the dual of L∞, ‖w‖₂ of L2)."""

    def __init__(self, w: torch.Tensor, margin: float, norm: str) -> None:
        super().__init__()
        self.w = w
        self.bias = margin * (w.abs().sum() if norm == "linf" else w.norm())

    def forward(self, x):
        gap = (x.flatten(1) - 0.5) @ self.w + self.bias
        return torch.stack([gap / 2, -gap / 2], dim=1)


@pytest.mark.parametrize("norm,margin", [("linf", 0.02), ("l2", 0.7)])
def test_t3_attack_succeeds_exactly_beyond_the_known_margin(norm, margin):
    torch.manual_seed(0)
    w = torch.randn(28 * 28)
    model = LinearMargin(w, margin, norm)
    x, y = torch.full((8, 1, 28, 28), 0.5), torch.zeros(8, dtype=torch.long)
    assert accuracy(model, x, y) == 1.0
    # From x itself: the first step already points along the optimal direction, so the attack must reach the
    # boundary whenever it lies inside the ball (a random L2 start would leave an orthogonal residue).
    attack = {scale: PGD(eps=scale * margin, norm=norm, steps=20, random_start=False) for scale in (1.01, 0.99)}
    assert accuracy(model, attack[1.01](model, x, y), y) == 0.0
    assert accuracy(model, attack[0.99](model, x, y), y) == 1.0


@pytest.mark.parametrize("norm,grid", [("linf", [0.0, 0.02, 0.05, 0.1, 0.2]), ("l2", [0.0, 0.5, 1.0, 1.5, 3.0])])
def test_t4_accuracy_does_not_increase_along_an_eps_grid(norm, grid, standard_model, test_batch):
    x, y = test_batch
    accuracies = []
    for eps in grid:
        torch.manual_seed(0)
        accuracies.append(accuracy(standard_model, PGD(eps=eps, norm=norm)(standard_model, x, y), y))
    one_sample = 1 / len(y)
    assert all(later <= earlier + one_sample for earlier, later in zip(accuracies, accuracies[1:])), accuracies


def test_t5_an_unbounded_budget_leaves_chance_accuracy(standard_model, test_batch):
    torch.manual_seed(0)
    assert accuracy(standard_model, PGD(eps=0.5)(standard_model, *test_batch), test_batch[1]) <= 0.10 + 0.02


def test_t6_pgd_is_no_weaker_than_fgsm_per_example(standard_model, test_batch):
    x, y = test_batch
    torch.manual_seed(0)
    fgsm = PGD(eps=0.1, steps=1, step_size=0.1, random_start=False)(standard_model, x, y)
    pgd = PGD(eps=0.1)(standard_model, x, y)
    with torch.no_grad():
        robust_to_pgd = standard_model(pgd).argmax(1) == y
        robust_to_fgsm = standard_model(fgsm).argmax(1) == y
    assert (robust_to_pgd & ~robust_to_fgsm).sum() == 0


def test_t7_the_attack_raises_the_loss(standard_model, test_batch):
    x, y = test_batch
    torch.manual_seed(0)
    x_adv = PGD(eps=0.1)(standard_model, x, y)
    with torch.no_grad():
        clean = F.cross_entropy(standard_model(x), y, reduction="none")
        attacked = F.cross_entropy(standard_model(x_adv), y, reduction="none")
    assert (attacked >= clean).float().mean() >= 0.99


def test_t2_zero_step_size_returns_the_input(standard_model, test_batch):
    x, y = test_batch
    assert torch.equal(PGD(eps=0.1, step_size=0.0)(standard_model, x, y), x)


def test_parity_the_evaluation_equals_a_direct_evaluation(tmp_path):
    """Catches inference-mode and batch-norm-mode bugs: the engine must report what a user's own loop does."""
    cfg = compose_config([*TINY, "model=wide_resnet", "model.depth=10", "model.widen_factor=1",
                          "attack.random_start=false", "~eval.attacks.pgd_l2", "logger=none"], tmp_path)
    datamodule = build_datamodule(cfg.dataset)
    classifier = build_classifier(cfg)  # batch norm: eval mode matters
    with torch.no_grad():  # non-trivial running statistics, so train and eval mode differ
        for module in classifier.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    evaluation = build_evaluation(cfg)
    results = evaluation.run(classifier.model, classifier.defense, datamodule, build_runtime(cfg))

    predictor = classifier.predictor().eval()
    limit = cfg.eval.n_samples
    direct = {}
    for name, attack in evaluation.attacks.items():
        correct = []
        for x, y in datamodule.test_dataloader(limit):
            x_adv = attack(predictor, x, y)
            with torch.no_grad():
                correct.append(predictor(x_adv).argmax(1) == y)
        direct[name] = torch.cat(correct).float().mean().item()
    with torch.no_grad():
        clean = torch.cat([predictor(x).argmax(1) == y for x, y in datamodule.test_dataloader()]).float().mean().item()
    assert results.clean_acc == pytest.approx(clean, abs=1e-12)
    for name in direct:
        assert results.robust_acc[name] == pytest.approx(direct[name], abs=1e-12), name
