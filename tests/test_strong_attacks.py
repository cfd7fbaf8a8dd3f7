"""APGD, APGD-T, FAB-T, AutoAttack, ARC, Square and the worst-case cascade: what each adds over PGD, and
cross-checks against torchattacks' implementations of the same attacks."""

from __future__ import annotations

import pytest
import torch
from conftest import accuracy

from robustlab.attacks import APGD, PGD, Square, WorstCase
from robustlab.attacks.apgd import checkpoints
from robustlab.attacks.base import Attack
from robustlab.attacks.losses import dlr as dlr_loss
from robustlab.attacks.square import square_fraction
from robustlab.errors import InvalidValue


@pytest.fixture(scope="module")
def model(standard_net):
    return standard_net


@pytest.fixture(scope="module")
def batch(noisy_synthetic):
    x, y = noisy_synthetic.test_set.tensors
    return x[:128], y[:128]


def test_apgd_checkpoints_follow_the_paper():
    assert checkpoints(100) == [22, 41, 58, 70, 80, 87, 93, 99]


def test_dlr_loss_is_invariant_to_shifting_and_scaling_logits():
    torch.manual_seed(0)
    logits, y = torch.randn(16, 10), torch.randint(0, 10, (16,))
    assert torch.allclose(dlr_loss(logits, y), dlr_loss(7.0 * logits + 3.0, y), atol=1e-5)
    assert ((dlr_loss(logits, y) > 0) == (logits.argmax(1) != y)).all()  # > 0 exactly when misclassified


@pytest.mark.parametrize("eps", [0.03, 0.05])
def test_apgd_ce_is_at_least_as_strong_as_pgd20(eps, model, batch):
    x, y = batch
    torch.manual_seed(0)
    pgd = accuracy(model, PGD(eps=eps, steps=20)(model, x, y), y)
    apgd = accuracy(model, APGD(eps=eps, steps=50)(model, x, y), y)
    assert apgd <= pgd + 1 / len(y)


def test_apgd_dlr_breaks_a_model_with_saturated_softmax(model, batch):
    """×1000 logits: cross-entropy gradients vanish (softmax is exactly one-hot); the DLR ratio does not."""
    x, y = batch
    saturated = torch.nn.Sequential(model, torch.nn.Identity())
    saturated.forward = lambda inputs: 1000.0 * model(inputs)
    torch.manual_seed(0)
    ce = accuracy(saturated, APGD(eps=0.05, steps=30, loss="ce")(saturated, x, y), y)
    dlr = accuracy(saturated, APGD(eps=0.05, steps=30, loss="dlr")(saturated, x, y), y)
    assert dlr < ce - 0.1


def test_square_uses_no_gradients_and_breaks_an_undefended_model(model, batch):
    x, y = batch
    torch.manual_seed(0)
    with torch.no_grad():  # a black-box attack needs no autograd at all
        x_adv = Square(eps=0.1, queries=300)(model, x, y)
    assert accuracy(model, x_adv, y) < accuracy(model, x, y) - 0.3


def test_square_schedule_halves_the_window():
    assert square_fraction(0.8, 0, 10_000) == 0.8
    assert square_fraction(0.8, 11, 10_000) == 0.4
    assert square_fraction(0.8, 11, 1_000) == pytest.approx(0.8 / 2 ** 2)  # 110 of 10,000: past 10 and 50


def test_worst_case_is_at_most_every_attack_per_example(model, batch):
    x, y = batch
    attacks = {"fgsm": PGD(eps=0.05, steps=1, step_size=0.05, random_start=False), "pgd": PGD(eps=0.05, steps=10),
               "square": Square(eps=0.05, queries=100)}
    torch.manual_seed(0)
    cascade = WorstCase(attacks)(model, x, y)
    with torch.no_grad():
        robust = model(cascade).argmax(1) == y
    # Replaying the cascade's random stream is not possible per attack, so compare with the attacks' own
    # stages: a point the cascade leaves standing resisted every attack it met.
    torch.manual_seed(0)
    first = attacks["fgsm"](model, x, y)
    with torch.no_grad():
        assert (~robust | (model(first).argmax(1) == y)).all()
    each = [accuracy(model, attack(model, x, y), y) for attack in attacks.values()]
    assert accuracy(model, cascade, y) <= min(each) + 0.02


def test_worst_case_only_attacks_points_still_standing(model, batch):
    x, y = batch
    seen = []

    class Recording(Attack):
        eps = 0.02

        def attack(self, model_, x_, y_, draws):
            seen.append(len(x_))
            return x_.clone()

    WorstCase({"pgd": PGD(eps=0.02, steps=10), "recording": Recording()})(model, x, y)
    with torch.no_grad():
        standing = (model(PGD(eps=0.02, steps=10)(model, x, y)).argmax(1) == y).sum().item()
    assert 0 < seen[0] < len(x) and abs(seen[0] - standing) <= 3  # only the points PGD did not break


@pytest.mark.parametrize("kwargs,field", [
    ({"eps": 0.1, "loss": "hinge"}, "loss"), ({"eps": 0.1, "steps": 0}, "steps"), ({"eps": 0.1, "rho": 0}, "rho"),
    ({"eps": 0.1, "eot_samples": 0}, "eot_samples"), ({"eps": 0.1, "targets": 3, "ranking": "random"}, "ranking"),
])
def test_apgd_rejects_bad_parameters(kwargs, field):
    with pytest.raises(InvalidValue) as error:
        APGD(**kwargs)
    assert error.value.field == field


def test_square_rejects_bad_parameters():
    with pytest.raises(InvalidValue) as error:
        Square(eps=0.1, queries=0)
    assert error.value.field == "queries"


def test_torchattacks_adapter_names_a_bad_class_with_its_full_key(tmp_path):
    from conftest import compose_config

    from robustlab.configuration import instantiate

    cfg = compose_config(["dataset=synthetic", "attack=torchattacks", "attack.name=NoSuchAttack"], tmp_path)
    with pytest.raises(InvalidValue) as error:
        instantiate(cfg.attack)
    assert error.value.key == "attack.name" and "CW" in str(error.value)


def test_torchattacks_minimal_perturbation_attacks_run_unbounded(model, batch):
    from robustlab.attacks import TorchAttacks

    x, y = batch
    x_adv = TorchAttacks("CW", eps=None, norm="l2", kwargs={"steps": 20, "c": 1.0})(model, x, y)
    assert accuracy(model, x_adv, y) < accuracy(model, x, y) - 0.3 and 0 <= x_adv.min() and x_adv.max() <= 1


def test_worst_case_eot_follows_its_attacks():
    automatic = WorstCase({"pgd": PGD(eps=0.1), "square": Square(eps=0.1)})
    assert automatic.eot_samples is None
    single = automatic.with_eot_samples(1)  # as evaluation does for the labelled no-EOT pass
    assert all(attack.eot_samples == 1 for attack in single.attacks.values())
    assert automatic.eot_samples is None  # the original cascade keeps EOT
    assert WorstCase({"pgd": PGD(eps=0.1, eot_samples=1)}).eot_samples == 1


def test_targeted_dlr_is_positive_exactly_when_the_target_wins_and_invariant_to_scale():
    from robustlab.attacks.losses import targeted_dlr

    torch.manual_seed(0)
    logits, y, target = torch.randn(32, 10), torch.randint(0, 10, (32,)), torch.randint(0, 10, (32,))
    target = torch.where(target == y, (y + 1) % 10, target)
    values = targeted_dlr(logits, y, target)
    assert ((values > 0) == (logits.gather(1, target[:, None]) > logits.gather(1, y[:, None])).squeeze(1)).all()
    assert torch.allclose(values, targeted_dlr(5.0 * logits - 2.0, y, target), atol=1e-5)


def test_apgd_t_runs_towards_the_most_likely_wrong_classes_in_turn():
    """Logits fixed per class: the targets are the other classes by decreasing logit, the label skipped."""
    class Fixed(torch.nn.Module):
        def forward(self, x):
            return torch.tensor([[0.0, 5.0, 1.0, 4.0, 2.0]]).expand(len(x), 5) + 0 * x.flatten(1)[:, :1]

    attack = APGD(eps=0.1, loss="dlr", targets=9)
    targets = attack._target_classes(Fixed(), torch.zeros(2, 1, 4, 4), torch.tensor([1, 3]), draws=1)
    assert len(targets) == 4  # at most classes − 1
    assert [t.tolist() for t in targets] == [[3, 1], [4, 4], [2, 2], [0, 0]]


def test_apgd_t_matches_torchattacks_apgdt_and_beats_apgd_ce(robust_net, noisy_synthetic):
    """The same adversarially trained model and images, 9 targets × 25 steps: robustlab's APGD-T and
    torchattacks' APGDT (an independent implementation of the same attack) agree within two images of 128."""
    torchattacks = pytest.importorskip("torchattacks")
    x, y = noisy_synthetic.test_set.tensors[0][:128], noisy_synthetic.test_set.tensors[1][:128]
    torch.manual_seed(0)
    ours = accuracy(robust_net, APGD(eps=0.03, loss="dlr", targets=9, steps=25)(robust_net, x, y), y)
    torch.manual_seed(0)
    theirs = accuracy(robust_net, torchattacks.APGDT(robust_net, norm="Linf", eps=0.03, steps=25, n_restarts=1,
                                                     n_classes=10)(x, y), y)
    torch.manual_seed(0)
    apgd_ce = accuracy(robust_net, APGD(eps=0.03, loss="ce", steps=25)(robust_net, x, y), y)
    assert abs(ours - theirs) <= 2 / 128
    assert ours < apgd_ce - 0.05  # the targeted runs find what the untargeted cross-entropy misses


def test_apgd_t_refuses_a_loss_without_a_targeted_form():
    with pytest.raises(InvalidValue, match="loss"):
        APGD(eps=0.1, loss=lambda logits, y: logits.sum(1), targets=3)
    with pytest.raises(InvalidValue, match="targets"):
        APGD(eps=0.1, loss="dlr", targets=0)


class _HalfLine(torch.nn.Module):
    """Two classes; class 1 while the image's mean pixel, moved along `sign`, stays within `margin` (an L2
    distance: 28 × the mean's shift) of 0.5; logits scaled by `scale` (how steep its cross-entropy is)."""

    def __init__(self, sign: float, margin: float, scale: float) -> None:
        super().__init__()
        self.sign, self.margin, self.scale = sign, margin, scale

    def forward(self, x):
        shift = self.sign * 28 * (x.flatten(1).mean(1) - 0.5)
        half = self.scale * (self.margin - shift) / 2
        return torch.stack([-half, half], dim=1)


@pytest.mark.parametrize("norm, eps", [("l2", 1.0), ("linf", 0.1)])
def test_arc_beats_the_expected_loss_on_a_mixture_whose_answer_is_known(norm, eps):
    """Member 1 (weight 0.6, a steep, saturated softmax) falls by moving one way, member 2 (weight 0.4, a
    shallow one) by moving the other way, each boundary at L2 distance 0.5; both cannot fall together. The
    best attack fools member 1: expected accuracy 0.4. The expected loss's gradient is member 2's (member 1's
    cross-entropy is flat), so PGD and APGD-CE fool member 2 only: 0.6. ARC, heaviest member first, finds 0.4."""
    from robustlab.attacks import ARC
    from robustlab.attacks.expectation import expected_correct
    from robustlab.defenses import MixturePredictor

    mixture = MixturePredictor([_HalfLine(1.0, 0.5, 20.0), _HalfLine(-1.0, 0.5, 1.0)], [0.6, 0.4]).eval()
    x, y = torch.full((4, 1, 28, 28), 0.5), torch.ones(4, dtype=torch.long)
    assert expected_correct(mixture, x, y).tolist() == [1.0] * 4
    torch.manual_seed(0)
    results = {name: expected_correct(mixture, attack(mixture, x, y), y) for name, attack in
               {"arc": ARC(eps=eps, norm=norm), "pgd": PGD(eps=eps, norm=norm, steps=20),
                "apgd_ce": APGD(eps=eps, norm=norm, steps=50)}.items()}
    assert results["arc"] == pytest.approx(torch.full((4,), 0.4))
    assert results["pgd"] == pytest.approx(torch.full((4,), 0.6))
    assert results["apgd_ce"] == pytest.approx(torch.full((4,), 0.6))


def test_arc_never_raises_the_expected_accuracy(model, robust_net, batch):
    from robustlab.attacks import ARC
    from robustlab.attacks.expectation import expected_correct
    from robustlab.defenses import MixturePredictor

    mixture = MixturePredictor([model, robust_net], [0.5, 0.5]).eval()
    x, y = batch[0][:64], batch[1][:64]
    torch.manual_seed(0)
    attacked = ARC(eps=0.03, steps=5)(mixture, x, y)
    assert (expected_correct(mixture, attacked, y) <= expected_correct(mixture, x, y) + 1e-6).all()


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_fab_projection_is_the_closest_point_of_the_hyperplane(norm):
    """Away from the box's faces the projection has a closed form: p + t·w (L2, t = (c − w·p)/‖w‖²) and
    p + r·sign(w) (L∞, r = (c − w·p)/‖w‖₁)."""
    from robustlab.attacks.fab import project_onto_hyperplane

    torch.manual_seed(0)
    p, w = torch.full((6, 1, 8, 8), 0.5), torch.randn(6, 1, 8, 8)
    c = (w * p).flatten(1).sum(1) + 0.05 * torch.randn(6)
    gap = (c - (w * p).flatten(1).sum(1)).view(-1, 1, 1, 1)
    expected = p + gap * w / (w ** 2).flatten(1).sum(1).view(-1, 1, 1, 1) if norm == "l2" else \
        p + gap * w.sign() / w.abs().flatten(1).sum(1).view(-1, 1, 1, 1)
    assert torch.allclose(project_onto_hyperplane(p, w, c, norm), expected, atol=1e-5)
    # Near the box's reach (w·z ≤ w·p + ½‖w‖₁ in [0, 1]), it binds: the point stays in [0, 1] and meets the plane.
    far = (w * p).flatten(1).sum(1) + 0.45 * w.abs().flatten(1).sum(1)
    z = project_onto_hyperplane(p, w, far, norm)
    assert z.min() >= 0 and z.max() <= 1
    assert torch.allclose((w * z).flatten(1).sum(1), far, atol=1e-3)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_fab_projection_agrees_with_a_bisection_where_the_box_binds(norm):
    """Random points anywhere in [0, 1] (many coordinates at or near a face), hyperplanes within reach, beyond
    it, and w with zeros: the exact projection equals a 200-step bisection on the same path, in float64."""
    from robustlab.attacks.fab import project_onto_hyperplane

    torch.manual_seed(1)
    p = torch.rand(64, 1, 6, 6, dtype=torch.float64).round(decimals=1)  # a tenth of them on each face
    w = torch.randn(64, 1, 6, 6, dtype=torch.float64) * (torch.rand(64, 1, 6, 6) > 0.2)
    reach = w.abs().flatten(1).sum(1)
    c = (w * p).flatten(1).sum(1) + torch.linspace(-1.5, 1.5, 64, dtype=torch.float64) * reach

    flat_p, flat_w = p.flatten(1), w.flatten(1)
    side = torch.sign(c - (flat_w * flat_p).sum(1))[:, None]
    step = flat_w if norm == "l2" else flat_w.sign()

    def along(t):
        return (flat_p + side * t * step).clamp(0, 1)

    low, high = torch.zeros(64, 1, dtype=torch.float64), torch.full((64, 1), 1e6, dtype=torch.float64)
    for _ in range(200):
        middle = (low + high) / 2
        short = side[:, 0] * ((flat_w * along(middle)).sum(1) - c) < 0
        low, high = torch.where(short[:, None], middle, low), torch.where(short[:, None], high, middle)
    assert torch.allclose(project_onto_hyperplane(p, w, c, norm).flatten(1), along(high), atol=1e-9)


@pytest.mark.parametrize("norm, margin", [("l2", 0.3), ("linf", 0.3 / 28)])
def test_fab_finds_the_minimum_norm_on_a_linear_model(norm, margin):
    """A linear model whose boundary is at a known distance: FAB-T succeeds just above it and fails just below."""
    from robustlab.attacks import FAB

    model = _HalfLine(1.0, 0.3, 1.0).eval()  # class 1 until the mean moves by 0.3/28: L2 0.3, L∞ 0.3/28
    x, y = torch.full((4, 1, 28, 28), 0.5), torch.ones(4, dtype=torch.long)
    for eps, broken in ((1.01 * margin, True), (0.99 * margin, False)):
        x_adv = FAB(eps=eps, norm=norm, steps=20, targets=1)(model, x, y)
        assert ((model(x_adv).argmax(1) != y).all() if broken else (x_adv == x).all()), (eps, broken)


def test_autoattack_chooses_its_version_by_the_predictor(model, batch):
    from robustlab.attacks import AutoAttack
    from robustlab.models import NoisyModel

    attack = AutoAttack(eps=0.03)
    assert attack.chosen(model, batch[0]) == "standard"
    assert attack.chosen(NoisyModel(model, sigma=0.1), batch[0]) == "rand"
    assert list(attack.cascades["standard"].attacks) == ["apgd_ce", "apgd_t", "fab_t", "square"]
    assert all(a.eot_samples == 20 for a in attack.cascades["rand"].attacks.values())
    assert attack.cascades["standard"].attacks["square"].queries == 5000
    assert AutoAttack(eps=0.03, version="rand").chosen(model, batch[0]) == "rand"
    assert all(a.eot_samples == 1 for a in attack.with_eot_samples(1).cascades["rand"].attacks.values())


@pytest.mark.slow  # about 100 s on 2 CPU cores: Square's 5000 queries on both sides
def test_autoattack_matches_torchattacks_autoattack_standard(robust_net, noisy_synthetic):
    """torchattacks' AutoAttack (version standard: APGD-CE, APGD-T, FAB-T, Square with 5000 queries, its
    components at torchattacks' default 10 steps) and robustlab's autoattack at the same 10 steps, on the same
    adversarially trained model and 128 images: within two images, and never above APGD-CE per image."""
    torchattacks = pytest.importorskip("torchattacks")
    from robustlab.attacks import AutoAttack

    x, y = noisy_synthetic.test_set.tensors[0][:128], noisy_synthetic.test_set.tensors[1][:128]
    torch.manual_seed(0)
    ours = AutoAttack(eps=0.03, steps=10)(robust_net, x, y)
    theirs = torchattacks.AutoAttack(robust_net, norm="Linf", eps=0.03, version="standard", n_classes=10, seed=0)(x, y)
    torch.manual_seed(0)
    apgd_ce = APGD(eps=0.03, steps=10)(robust_net, x, y)  # the cascade's first attack, from the same seed
    correct = {name: (robust_net(x_adv).argmax(1) == y) for name, x_adv in
               {"ours": ours, "theirs": theirs, "apgd_ce": apgd_ce}.items()}
    assert abs(correct["ours"].float().mean() - correct["theirs"].float().mean()) <= 2 / 128
    assert (correct["ours"] <= correct["apgd_ce"]).all()


def test_autoattack_cascade_never_raises_accuracy_and_beats_its_first_attack(robust_net, noisy_synthetic):
    """Per image: never right after the cascade where it was wrong before, nor where APGD-CE alone (the
    cascade's first attack, from the same seed) already broke it."""
    from robustlab.attacks import AutoAttack

    x, y = noisy_synthetic.test_set.tensors[0][:64], noisy_synthetic.test_set.tensors[1][:64]
    torch.manual_seed(0)
    cascade = AutoAttack(eps=0.03, steps=10, square_queries=100)(robust_net, x, y)
    torch.manual_seed(0)
    first = APGD(eps=0.03, steps=10)(robust_net, x, y)
    with torch.no_grad():
        clean, after, alone = (robust_net(v).argmax(1) == y for v in (x, cascade, first))
    assert (after <= clean).all() and (after <= alone).all()
    assert after.float().mean() < alone.float().mean()  # the later attacks find more
