"""The L1 and L0 threat models: their projections against independent solutions, the new attacks against a peer
(adv-lib, on the same images and model), MSD, E-AT's alternation, and the per-threat-model summary with its union
and average, down to the command a newcomer types."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY, run_script, script_environment, train_standard
from scipy.optimize import linprog

from robustlab.attacks import APGD, MSD, PGD, SparseRS
from robustlab.attacks.fab import project_onto_hyperplane
from robustlab.attacks.norms import L0Ball, L1Ball
from robustlab.attacks.sparse_rs import swap_share
from robustlab.data import SyntheticDataModule
from robustlab.defenses import MixedAdversarialTraining
from robustlab.evaluation.record import CLEAN, WORST_CASE
from robustlab.evaluation.threats import AVERAGE, UNION, per_threat_model
from robustlab.models import BasicNet


# -- projections, against solutions computed another way ----------------------------------------------------------
def l1_box_projection_by_bisection(x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """The Euclidean projection of y onto {z: ‖z − x‖₁ ≤ ε, z ∈ [0, 1]} by bisection on the threshold λ of the
    KKT conditions, zᵢ = xᵢ + sign(dᵢ)·min(max(|dᵢ| − λ, 0), roomᵢ), d = y − x (double precision)."""
    d, base = (y - x).flatten(1).double(), x.flatten(1).double()
    room = torch.where(d > 0, 1 - base, base)

    def spent(lam):
        return torch.minimum((d.abs() - lam).clamp(min=0), room).sum(1, keepdim=True)

    low, high = torch.zeros(len(d), 1, dtype=torch.double), d.abs().max(1, keepdim=True).values
    for _ in range(200):
        middle = (low + high) / 2
        over = spent(middle) > eps
        low, high = torch.where(over, middle, low), torch.where(over, high, middle)
    lam = torch.where(spent(torch.zeros_like(low)) > eps, high, torch.zeros_like(high))
    return (base + d.sign() * torch.minimum((d.abs() - lam).clamp(min=0), room)).view_as(x)


@pytest.mark.parametrize("eps", [0.3, 4.0, 25.0, 1e4])
def test_the_l1_projection_is_onto_the_ball_intersected_with_the_box(eps):
    torch.manual_seed(0)
    x = torch.rand(6, 3, 8, 8)
    y = x + torch.randn_like(x)
    projected = L1Ball.project_in_box(x, y - x, eps)
    assert torch.allclose(projected.double(), l1_box_projection_by_bisection(x, y, eps), atol=1e-6)
    assert projected.min() >= 0 and projected.max() <= 1
    sizes = (projected - x).flatten(1).abs().sum(1)
    assert (sizes <= eps * (1 + 1e-6)).all()


def test_projecting_onto_the_box_as_well_spends_the_budget_that_clipping_wastes():
    """"Mind the box": the plain L1 projection followed by clipping leaves budget unused where the box cuts; the
    projection onto the intersection spends all of it."""
    torch.manual_seed(0)
    x = (torch.rand(8, 1, 28, 28) > 0.7).float()  # mostly 0 and 1: the box binds almost everywhere
    y = x + torch.randn_like(x)
    eps = 10.0
    clipped = (x + L1Ball.project(y - x, eps)).clamp(0, 1)
    exact = L1Ball.project_in_box(x, y - x, eps)
    assert (clipped - x).flatten(1).abs().sum(1).max() < 0.8 * eps
    assert torch.allclose((exact - x).flatten(1).abs().sum(1), torch.full((8,), eps), rtol=1e-5)


def test_the_l0_projection_keeps_the_pixels_clipping_costs_least():
    """Each pixel's best value in the box is its clipped change; among the pixels, the k kept are those where
    keeping loses least against dropping (a known answer on one 2×2 two-channel image, k = 1)."""
    x = torch.tensor([[[[0.5, 0.0], [1.0, 0.2]], [[0.5, 0.0], [1.0, 0.2]]]])
    delta = torch.tensor([[[[0.2, -0.9], [0.8, 0.3]], [[0.2, -0.9], [0.8, 0.3]]]])
    # gains ‖δ‖² − ‖δ − clip(δ)‖² per pixel: 0.08, 0 (nothing below 0), 0 (nothing above 1), 0.18
    kept = L0Ball.project_in_box(x, delta, 1)
    expected = x.clone()
    expected[..., 1, 1] = 0.5
    assert torch.allclose(kept, expected)
    assert L0Ball.size(kept - x).tolist() == [1.0]


def test_the_l1_hyperplane_projection_is_the_linear_programs_optimum():
    """FAB's projection under L1: the closest point of [0, 1]^d (in L1) on w·z = c, against scipy's LP."""
    torch.manual_seed(0)
    point, w = torch.rand(3, 1, 3, 3, dtype=torch.float64), torch.randn(3, 1, 3, 3, dtype=torch.float64)
    c = (w * point).flatten(1).sum(1) + torch.tensor([0.4, -0.3, 0.05], dtype=torch.float64)
    ours = project_onto_hyperplane(point, w, c, "l1")
    for p, weights, target, z in zip(point.flatten(1), w.flatten(1), c, ours.flatten(1)):
        d = len(p)  # variables: z (d) and t ≥ |z − p| (d); minimise Σ t
        cost = [0.0] * d + [1.0] * d
        rows, bounds = [], []
        for i in range(d):
            rows += [[1.0 if j == i else 0.0 for j in range(d)] + [-1.0 if j == i else 0.0 for j in range(d)],
                     [-1.0 if j == i else 0.0 for j in range(d)] + [-1.0 if j == i else 0.0 for j in range(d)]]
            bounds.append((0.0, 1.0))
        limits = [value for i in range(d) for value in (float(p[i]), -float(p[i]))]
        solution = linprog(cost, A_ub=rows, b_ub=limits, A_eq=[list(map(float, weights)) + [0.0] * d],
                           b_eq=[float(target)], bounds=bounds + [(0, None)] * d)
        assert solution.success
        assert float((weights * z).sum()) == pytest.approx(float(target), abs=1e-9)
        assert float((z - p).abs().sum()) == pytest.approx(solution.fun, abs=1e-7)


# -- the attacks ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_and_images():
    data = SyntheticDataModule(num_train=1024, num_test=256, val_size=64, batch_size=64, eval_batch_size=256)
    data.setup()
    torch.manual_seed(0)
    model = train_standard(BasicNet(in_channels=1, image_size=28, num_classes=10, mean=[0.5], std=[0.25]), data,
                           epochs=5, lr=1e-3)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    x, y = data.test_set.tensors
    return model, x[:128], y[:128]


def robust_accuracy(model, x_adv, y) -> float:
    with torch.no_grad():
        return float((model(x_adv).argmax(1) == y).float().mean())


def test_apgd_l1_is_at_least_as_strong_as_adv_libs(model_and_images):
    """APGD-CE under L1, 100 steps, against adv-lib's APGD (norm 1, 100 steps) on the same images: at most the peer's
    robust accuracy + 1 point, at a budget where the peer leaves between 10% and 90% standing."""
    from adv_lib.attacks.auto_pgd import apgd

    model, x, y = model_and_images
    eps = 2.0
    torch.manual_seed(0)
    ours = APGD(eps, "l1", steps=100)(model, x, y)
    torch.manual_seed(0)
    theirs = apgd(model, x, y, eps=eps, norm=1, n_iter=100)
    assert ((theirs - x).flatten(1).abs().sum(1) <= eps * (1 + 1e-4)).all()
    peer = robust_accuracy(model, theirs, y)
    assert 0.1 < peer < 0.9, "the budget should leave the comparison something to compare"
    assert robust_accuracy(model, ours, y) <= peer + 0.01
    assert ((ours - x).flatten(1).abs().sum(1) <= eps * (1 + 1e-5) + 1e-6).all()


def test_pgd_l0_is_at_least_as_strong_as_adv_libs_minimum_norm_l0_attack(model_and_images):
    """PGD-L0 (20 steps) against adv-lib's FMN under L0 (the peer's projected-gradient L0 attack, 200 steps,
    minimum-norm: an image counts as broken at k if its smallest adversarial perturbation changes ≤ k pixels)."""
    from adv_lib.attacks.fast_minimum_norm import fmn

    model, x, y = model_and_images
    k = 4
    torch.manual_seed(0)
    ours = PGD(k, "l0", steps=20)(model, x, y)
    torch.manual_seed(0)
    theirs = fmn(model, x, y, norm=0, steps=200)
    with torch.no_grad():
        broken = (model(theirs).argmax(1) != y) & ((theirs != x).any(dim=1).flatten(1).sum(1) <= k)
    peer = 1 - float(broken.float().mean())
    assert 0.1 < peer < 0.9
    assert robust_accuracy(model, ours, y) <= peer + 0.01
    assert ((ours != x).any(dim=1).flatten(1).sum(1) <= k).all()


def test_sparse_rs_changes_exactly_k_pixels_to_corners_and_breaks_images(model_and_images):
    model, x, y = model_and_images
    torch.manual_seed(0)
    found = SparseRS(8, queries=300)(model, x, y)
    changed = (found != x).any(dim=1).flatten(1)
    assert (changed.sum(1) <= 8).all()
    assert set(found[(found != x)].unique().tolist()) <= {0.0, 1.0}, "Sparse-RS sets pixels to corners"
    assert robust_accuracy(model, found, y) < robust_accuracy(model, x, y) - 0.2


def test_sparse_rs_swaps_pixels_on_the_references_schedule():
    """α_init / 2, 4, 5, 6, 8, 10, 12, 15, 20 after 0, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 of 10,000
    queries (the reference's L0 `p_selection`), rescaled to the budget."""
    schedule = [(0, 0.3), (1, 0.15), (50, 0.15), (51, 0.075), (201, 0.06), (501, 0.05), (1001, 0.0375),
                (2001, 0.03), (4001, 0.025), (6001, 0.02), (8001, 0.015)]
    for iteration, share in schedule:
        assert swap_share(0.3, iteration, 10_000) == pytest.approx(share), iteration
    assert swap_share(0.3, 101, 1000) == pytest.approx(0.0375)  # 1010 of 10,000


def test_msd_over_one_ball_is_pgd_without_a_random_start(model_and_images):
    model, x, y = model_and_images
    msd = MSD({"l1": 3.0}, steps=5)
    pgd = PGD(3.0, "l1", steps=5, random_start=False)
    assert torch.equal(msd(model, x[:32], y[:32]), pgd(model, x[:32], y[:32]))


def test_msd_keeps_per_image_the_worst_of_the_norms_steps(model_and_images):
    """Over three balls, MSD ends inside their union and is at least as strong as each one-norm PGD with the
    same steps (without a random start)."""
    model, x, y = model_and_images
    budgets = {"linf": 0.05, "l2": 0.8, "l1": 2.0}
    found = MSD(budgets, steps=10)(model, x, y)
    delta = (found - x).flatten(1)
    inside = (delta.abs().amax(1) <= 0.05 + 1e-6) | (delta.norm(dim=1) <= 0.8 + 1e-5) | \
        (delta.abs().sum(1) <= 2.0 * (1 + 1e-5))
    assert inside.all()
    singles = [robust_accuracy(model, PGD(eps, norm, steps=10, random_start=False)(model, x, y), y)
               for norm, eps in budgets.items()]
    assert robust_accuracy(model, found, y) <= min(singles) + 0.02


def test_e_at_alternates_its_attacks_batch_by_batch():
    seen = []

    def recording(name):
        def attack(model, x, y):
            seen.append(name)
            return x
        return attack

    defense = MixedAdversarialTraining({"l1": recording("l1"), "linf": recording("linf")}, strategy="alternate")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    for _ in range(5):
        defense.training_loss(model, torch.rand(3, 1, 2, 2), torch.tensor([0, 1, 0]))
    assert seen == ["l1", "linf", "l1", "linf", "l1"]


# -- the summary: per threat model, union, average ------------------------------------------------------------
def test_per_threat_model_union_and_average_on_known_columns():
    """Four images, an attack per norm and one outside the dataset's budget: each norm's column is the worst of
    clean and its attacks, the union is the worst case given, the average the mean of the norms' columns."""
    t = torch.tensor
    per_example = {CLEAN: t([1.0, 1, 1, 0]), "a_linf": t([1.0, 0, 1, 0]), "b_linf": t([1.0, 1, 0, 0]),
                   "c_l1": t([0.0, 1, 1, 0]), "big_l1": t([0.0, 0, 0, 0]), WORST_CASE: t([0.0, 0, 0, 0])}
    budgets = {"a_linf": [("linf", 0.1)], "b_linf": [("linf", 0.05)], "c_l1": [("l1", 7.5)],
               "big_l1": [("l1", 30.0)]}
    columns, summary = per_threat_model(per_example, budgets, [("linf", 0.1), ("l2", 1.5), ("l1", 7.5)], 4)
    assert columns["worst_case/linf"].tolist() == [1, 0, 0, 0]
    assert columns["worst_case/l1"].tolist() == [0, 1, 1, 0]  # big_l1 is outside the budget: not in the column
    assert "l2" not in summary and "worst_case/l2" not in columns  # no L2 attack ran
    assert summary["linf"]["robust_acc"] == 0.25 and summary["linf"]["strongest"] == "a_linf"
    assert summary["l1"]["attacks"] == ["c_l1"] and summary["l1"]["robust_acc"] == 0.5
    assert summary[UNION]["robust_acc"] == 0.0
    assert summary[AVERAGE]["robust_acc"] == pytest.approx(0.375)
    low, high = summary[AVERAGE]["interval"]
    assert low < 0.375 < high


def test_a_newcomers_command_reports_every_threat_model(tmp_path):
    """`python train.py defense=adv_train attack=apgd_l1`, from the README, small: the record and the console
    say per threat model, the union and the average; `scripts/peers.py` puts adv-lib's figures beside them."""
    result = run_script("train.py", "defense=adv_train", "attack=apgd_l1", *TINY, "trainer.max_epochs=1",
                        "attack.steps=10", "+attack@eval.attacks.pgd_l0=pgd_l0", "eval.audit.enabled=false",
                        output_root=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(Path(result.stdout.strip().splitlines()[-1].removeprefix("metrics: ")).read_text())
    threats = record["threats"]
    assert set(threats) == {"linf", "l2", "l1", "l0", UNION, AVERAGE}
    assert threats["l1"]["attacks"] == ["apgd_l1"] and threats["l0"]["attacks"] == ["pgd_l0"]
    assert record["eps"] == {"linf": 0.1, "l2": 1.5, "l1": 7.5, "l0": 18.0}
    assert "per threat model" in result.stdout + result.stderr and "union" in result.stdout + result.stderr
    peers = subprocess.run([sys.executable, str(ROOT / "scripts" / "peers.py"), str(tmp_path), "--n", "16"],
                           capture_output=True, text=True, timeout=600, env=script_environment())
    assert peers.returncode == 0, peers.stderr[-3000:]
    row = [line for line in peers.stdout.splitlines() if line.startswith("| adv_train")]
    assert len(row) == 1 and row[0].count("|") == 13, peers.stdout


# -- EOT and BPDA, as for the dense norms ---------------------------------------------------------------------
class CountingNoisyNet(torch.nn.Module):
    """A linear classifier behind input noise (randomized), sure of class 0 whatever the budget (no image is broken,
    so every step runs); counts the images it is given with gradients on."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(16, 3)
        with torch.no_grad():
            self.linear.weight.mul_(0.01)
            self.linear.bias.copy_(torch.tensor([5.0, 0.0, 0.0]))
        self.with_gradient = 0

    def forward(self, x):
        if torch.is_grad_enabled() and x.requires_grad:
            self.with_gradient += len(x)
        return self.linear((x + 0.1 * torch.randn_like(x)).flatten(1))


@pytest.mark.parametrize("attack", [PGD(2.0, "l1", steps=3), APGD(2.0, "l1", steps=3), PGD(3, "l0", steps=3),
                                    MSD({"linf": 0.1, "l1": 2.0}, steps=3, eot_samples=None)])
def test_the_sparse_attacks_average_their_gradients_over_eot_draws(attack):
    """No `eot_samples`: on a randomized predictor each gradient averages the default 10 draws (the images go
    through the predictor 10 times per step)."""
    from robustlab.attacks.expectation import DEFAULT_EOT_DRAWS

    model = CountingNoisyNet()
    x, y = torch.rand(4, 1, 4, 4), torch.zeros(4, dtype=torch.long)
    attack(model, x, y)
    gradients = {"PGD": 3, "APGD": 3 + 1, "MSD": 3}[type(attack).__name__]  # APGD: its start's gradient too
    assert model.with_gradient == 4 * gradients * DEFAULT_EOT_DRAWS


@pytest.mark.parametrize("attack", [APGD(3.0, "l1", steps=20), PGD(6, "l0", steps=20)])
def test_the_sparse_attacks_break_bit_depth_reduction_through_bpda(attack, standard_net, noisy_synthetic):
    """Through the rounding's stand-in (BPDA) they do about as well as on the undefended model; without it, the
    gradient is zero and they do markedly worse."""
    from robustlab.models import BitDepthReduction, Preprocessed
    from robustlab.models.preprocessing import backward_through_stand_ins

    squeezed = Preprocessed(standard_net, BitDepthReduction(bits=4)).eval()
    x, y = noisy_synthetic.test_set.tensors[0][:128], noisy_synthetic.test_set.tensors[1][:128]
    torch.manual_seed(0)
    plain = robust_accuracy(squeezed, attack(squeezed, x, y), y)
    with backward_through_stand_ins(squeezed):
        torch.manual_seed(0)
        bpda = robust_accuracy(squeezed, attack(squeezed, x, y), y)
    torch.manual_seed(0)
    undefended = robust_accuracy(standard_net, attack(standard_net, x, y), y)
    assert bpda <= undefended + 0.05
    assert plain > bpda + 0.2
