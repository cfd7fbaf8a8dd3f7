"""A3, the budgeted strong attack: image by image against AutoAttack, its target ranking where the answer is known,
its online discarding and EOT counted in passes, and its schedule. (Its contract: tests/test_attacks.py, which
runs every attack config.)"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import compose_config
from hydra.utils import instantiate

from robustlab.attacks import A3, APGD
from robustlab.attacks.a3 import cosine_step_sizes
from robustlab.attacks.expectation import DEFAULT_EOT_DRAWS
from robustlab.attacks.targeting import nearest_boundaries
from robustlab.errors import InvalidValue
from robustlab.evaluation.passes import Passes, counting_passes


def correct_after(attack, model, x, y) -> tuple[torch.Tensor, Passes]:
    """Per image, whether `model` is still right after `attack`, and the passes the attack took."""
    torch.manual_seed(0)
    passes = Passes()
    with counting_passes(model, passes):
        x_adv = attack(model, x, y)
    with torch.no_grad():
        return model(x_adv).argmax(1) == y, passes


def test_a3_breaks_every_image_autoattack_breaks_at_a_sixth_of_its_passes(robust_net, noisy_synthetic, tmp_path):
    """On a small adversarially trained model, `attack=a3` and `attack=autoattack` (standard: APGD-CE, APGD-T and
    FAB-T at 100 steps, Square at 5000 queries) from their configs, on the same 96 images: every image that
    AutoAttack breaks, A3 breaks too, and A3's forward + backward passes are at most a sixth of AutoAttack's."""
    x, y = noisy_synthetic.test_set.tensors[0][:96], noisy_synthetic.test_set.tensors[1][:96]
    attacks = {option: instantiate(compose_config(["dataset=synthetic", f"attack={option}", "attack.eps=0.03"],
                                                  tmp_path).attack) for option in ("a3", "autoattack")}
    a3, a3_passes = correct_after(attacks["a3"], robust_net, x, y)
    autoattack, autoattack_passes = correct_after(attacks["autoattack"], robust_net, x, y)
    with torch.no_grad():
        clean = robust_net(x).argmax(1) == y
    assert autoattack.sum() < clean.sum() - 20  # the comparison is not decided by the clean images alone
    missed = (a3 & ~autoattack).nonzero().squeeze(1).tolist()
    assert missed == [], f"images AutoAttack breaks and A3 misses: {missed}"
    assert 6 * (a3_passes.forward + a3_passes.backward) <= autoattack_passes.forward + autoattack_passes.backward


class _TwoBoundaries(torch.nn.Module):
    """Four classes on 2 × 2 images, label 0 at z = 0. Class 1 is the most likely wrong class (z₁ = −0.5) behind
    a flat boundary, 0.5 / 0.4 = 1.25 away in L∞ and moving away from class 2; class 2 (z₂ = −2) is behind a
    steep one, 2 / 40 = 0.05 away; class 3 never moves. At ε = 0.1 only class 2 can be reached."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = (x - 0.5).flatten(1).sum(1)
        return torch.stack([torch.zeros_like(s), -0.5 + 0.1 * s, -2.0 - 10.0 * s, torch.full_like(s, -5.0)], 1)


def test_targets_are_ranked_by_linearized_boundary_distance_where_the_answer_is_known():
    x, y = torch.full((3, 1, 2, 2), 0.5), torch.zeros(3, dtype=torch.long)
    ranking = nearest_boundaries(_TwoBoundaries(), x, y, draws=1, count=3, norm="linf")
    assert [rank.tolist() for rank in ranking] == [[2, 2, 2], [1, 1, 1], [3, 3, 3]]
    # One target each: the logit ranking spends its run on class 1 and breaks nothing; A3's reaches class 2.
    logit_ranked, _ = correct_after(APGD(eps=0.1, loss="dlr", targets=1, steps=20), _TwoBoundaries(), x, y)
    a3, _ = correct_after(A3(eps=0.1, rounds=0, targets=1, target_steps=20), _TwoBoundaries(), x, y)
    assert logit_ranked.all() and not a3.any()


class _Unbreakable(torch.nn.Module):
    """The label's logit far ahead whatever the input (a gradient all the same); `noise` > 0 makes it random."""

    def __init__(self, noise: float = 0.0) -> None:
        super().__init__()
        self.noise = noise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.tensor([9.0, 0.0, 0.0, 0.0]) + 0.01 * x.flatten(1)[:, :4]
        return logits + self.noise * torch.randn_like(logits)


def test_rounds_after_the_first_attack_only_the_kept_fraction_and_broken_images_cost_nothing():
    """An image that stands: every round's steps, then only the `keep` fraction per later round (with its
    initialization steps). An image broken at once: its first pass only."""
    x, y = torch.rand(10, 1, 2, 2), torch.zeros(10, dtype=torch.long)
    attack = A3(eps=0.1, rounds=3, steps=4, init_steps=2, keep=0.3, targets=0)
    _, passes = correct_after(attack, _Unbreakable(), x, y)
    kept = math.ceil(0.3 * 10)
    assert passes.backward == 10 * (4 + 1) + 2 * kept * (2 + 4 + 1)
    _, passes = correct_after(attack, _Unbreakable(), x, torch.ones(10, dtype=torch.long))  # all wrong already
    assert passes.backward == 0  # misclassified on the clean image: not attacked


def test_a3_attacks_a_randomized_predictor_through_eot():
    """No `eot_samples`: on a predictor whose outputs vary, each gradient averages the default EOT draws."""
    x, y = torch.rand(6, 1, 2, 2), torch.zeros(6, dtype=torch.long)
    _, passes = correct_after(A3(eps=0.1, rounds=1, steps=3, targets=0), _Unbreakable(noise=0.1), x, y)
    assert passes.backward == 6 * (3 + 1) * DEFAULT_EOT_DRAWS
    _, passes = correct_after(A3(eps=0.1, rounds=1, steps=3, targets=0, eot_samples=2), _Unbreakable(0.1), x, y)
    assert passes.backward == 6 * (3 + 1) * 2


def test_cosine_step_sizes_fall_from_eps_towards_a_thousandth():
    sizes = cosine_step_sizes(0.1, 50)
    assert sizes[0] == pytest.approx(0.1) and all(a > b for a, b in zip(sizes, sizes[1:]))
    assert 1e-4 < sizes[-1] < 0.01
    assert min(cosine_step_sizes(0.1, 10)) > 0.01  # short runs stop at ε/10


@pytest.mark.parametrize("kwargs,field", [
    ({"rounds": 0, "targets": 0}, "rounds"), ({"steps": 0}, "steps"), ({"target_steps": 0}, "target_steps"),
    ({"keep": 0.0}, "keep"), ({"keep": 1.5}, "keep"), ({"init_steps": -1}, "init_steps"), ({"targets": 1.5}, "targets"),
])
def test_a3_refuses_settings_that_would_spend_nothing_or_make_no_sense(kwargs, field):
    with pytest.raises(InvalidValue) as error:
        A3(eps=0.1, **kwargs)
    assert error.value.field == field
