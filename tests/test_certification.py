"""Randomized smoothing: the vote, CERTIFY against closed forms, the soundness check, the certified run."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import TINY, compose_config, run_script
from scipy.stats import norm
from torch import nn

from robustlab.attacks.expectation import expected_correct, is_randomized, predicted_classes
from robustlab.configuration import instantiate, to_plain
from robustlab.errors import InvalidValue
from robustlab.evaluation.audit import certificate_check
from robustlab.evaluation.certification import (
    ATTACKED,
    CERTIFIED,
    certified_accuracy,
    certify,
    certify_and_check,
    lower_confidence_bound,
    radius,
)
from robustlab.models import SmoothedClassifier
from robustlab.models.smoothing import ABSTAIN, tie_p_value

SIDE = 28


class HalfSpace(nn.Module):
    """Class 1 where the image's mean pixel exceeds `threshold`, else class 0: a linear classifier whose
    decision boundary lies at L2 distance |mean − threshold|·28 from an image. Under N(0, σ²) pixel noise the
    mean moves by N(0, (σ/28)²), so P(class 1) = Φ(28·(mean − threshold)/σ) exactly."""

    def __init__(self, threshold: float = 0.5) -> None:
        super().__init__()
        self.threshold = threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        margin = SIDE * (x.flatten(1).mean(1) - self.threshold)  # signed L2 distance to the boundary
        return torch.stack([-margin, margin], dim=1)


def image_at(distance: float, threshold: float = 0.5) -> torch.Tensor:
    """A constant image at signed L2 distance `distance` from `HalfSpace(threshold)`'s boundary."""
    return torch.full((1, 1, SIDE, SIDE), threshold + distance / SIDE)


def test_certified_radius_matches_the_closed_form_on_a_half_space():
    """p_A = Φ(d/σ) exactly, so the radius σ·Φ⁻¹(p_A) is d, the true distance to the boundary; CERTIFY's
    lower confidence bound makes it slightly smaller, never larger."""
    sigma, distance = 0.5, 0.6
    smoothed = SmoothedClassifier(HalfSpace(), sigma=sigma, chunk_size=50_000).eval()
    torch.manual_seed(0)
    certificate = certify(smoothed, image_at(distance), n0=100, n=100_000, alpha=0.001)
    assert certificate.predicted.tolist() == [1]
    p_a = norm.cdf(distance / sigma)
    assert certificate.p_lower.item() <= p_a
    r = certificate.radius.item()
    assert r <= distance and r == pytest.approx(distance, abs=0.02)
    # The radius of a bound is σ·Φ⁻¹(bound), and the bound of the exact count is the Clopper–Pearson one.
    assert radius(torch.tensor([p_a], dtype=torch.float64), sigma).item() == pytest.approx(distance, rel=1e-9)
    successes = torch.tensor([round(p_a * 100_000)])
    assert lower_confidence_bound(successes, 100_000, 0.001).item() == pytest.approx(p_a - 3.09 * math.sqrt(
        p_a * (1 - p_a) / 100_000), abs=2e-4)  # the normal approximation of the one-sided 99.9% bound


def test_abstains_below_the_bound():
    """On the boundary p_A = 1/2: CERTIFY and the vote both abstain; far from it, both answer."""
    smoothed = SmoothedClassifier(HalfSpace(), sigma=0.5, votes=1000, chunk_size=50_000).eval()
    torch.manual_seed(0)
    on_boundary, far = image_at(0.0), image_at(-2.0)
    certificate = certify(smoothed, torch.cat([on_boundary, far]), n0=100, n=1000, alpha=0.001)
    assert certificate.predicted.tolist() == [ABSTAIN, 0]
    assert certificate.radius[0].item() == 0 and certificate.radius[1].item() > 0.5
    assert smoothed.vote(torch.cat([on_boundary, far])).tolist() == [ABSTAIN, 0]
    # Abstaining is never correct, whatever the label.
    assert expected_correct(smoothed, on_boundary, torch.tensor([0])).item() == 0
    assert expected_correct(smoothed, on_boundary, torch.tensor([1])).item() == 0
    assert predicted_classes(smoothed, on_boundary).tolist() == [ABSTAIN]


def test_the_vote_tests_the_two_leading_classes():
    assert tie_p_value(torch.tensor([10]), torch.tensor([10])).item() == pytest.approx(2 * 0.5 ** 10)
    assert tie_p_value(torch.tensor([5]), torch.tensor([10])).item() == 1.0


def test_certificate_is_deterministic_for_a_fixed_seed(standard_net, noisy_synthetic):
    smoothed = SmoothedClassifier(standard_net, sigma=0.25).eval()
    x = noisy_synthetic.test_set.tensors[0][:20]
    results = []
    for _ in range(2):
        torch.manual_seed(7)
        results.append(certify(smoothed, x, n0=50, n=300, alpha=0.001))
    assert torch.equal(results[0].predicted, results[1].predicted)
    assert torch.equal(results[0].radius, results[1].radius)
    torch.manual_seed(8)
    assert not torch.equal(certify(smoothed, x, n0=50, n=300, alpha=0.001).p_lower, results[0].p_lower)


def test_smoothed_classifier_is_randomized_and_checks_its_arguments(standard_net, noisy_synthetic):
    x = noisy_synthetic.test_set.tensors[0][:8]
    assert is_randomized(SmoothedClassifier(standard_net, sigma=0.25).eval(), x)
    for field, value in (("sigma", 0), ("votes", 0), ("alpha", 1.0), ("chunk_size", 0)):
        arguments = {"sigma": 0.25, field: value}
        with pytest.raises(InvalidValue, match=field):
            SmoothedClassifier(standard_net, **arguments)


class WrongSigma(SmoothedClassifier):
    """Noise of `true_sigma`, certificates computed with `sigma`: a certificate broken on purpose."""

    def __init__(self, model: nn.Module, sigma: float, true_sigma: float) -> None:
        super().__init__(model, sigma=sigma, chunk_size=50_000)
        self.true_sigma = true_sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x + self.true_sigma * torch.randn_like(x))


def half_space_images() -> tuple[torch.Tensor, torch.Tensor]:
    """Images at L2 distances 0.3 … 1.2 on both sides of the boundary, labelled by their side."""
    distances = torch.linspace(0.3, 1.2, 8)
    distances = torch.cat([distances, -distances])
    x = torch.cat([image_at(float(d)) for d in distances])
    return x, (distances > 0).long()


@pytest.mark.parametrize("broken", [False, True])
def test_soundness_check_fires_on_a_wrong_sigma(broken, tmp_path):
    """With the right σ no certified image changes class inside its radius; with radii computed from 10× σ,
    the L2 attack crosses the boundary inside the claimed radii and the audit's flag h fires."""
    cfg = compose_config(["dataset=synthetic", "eval.certify.n0=50", "eval.certify.n=500",
                          "eval.certify.radius_factors=[0,0.25,0.5,1.0]", "eval.certify.attack.steps=10"], tmp_path)
    x, y = half_space_images()
    smoothed = (WrongSigma(HalfSpace(), sigma=2.0, true_sigma=0.2) if broken else
                WrongSigma(HalfSpace(), sigma=0.2, true_sigma=0.2)).eval()
    record = certify_and_check(to_plain(cfg.eval.certify), lambda eps: instantiate(cfg.eval.certify.attack, eps=eps),
                               smoothed, x, y, eps_l2=float(cfg.dataset.eps.l2), seed=cfg.seed)
    check = certificate_check(record)
    assert record["n_samples"] == len(y) and record["soundness"]["checked"] > 0
    assert check["flagged"] == broken and check["letter"] == "h"
    if broken:
        assert record["soundness"]["flipped"] and all(0 <= i < len(y) for i in record["soundness"]["flipped"])
    # Certified accuracy never exceeds what the attack leaves, at any radius, when the certificate is sound.
    if not broken:
        assert all(c <= a for c, a in zip(record["certified_accuracy"], record["attacked_accuracy"]))


def test_certified_accuracy_counts_correct_certificates_at_least_as_large():
    from robustlab.evaluation.certification import Certificates

    certificates = Certificates(torch.tensor([0, 1, ABSTAIN, 2]), torch.tensor([0.5, 1.0, 0.0, 2.0]),
                                torch.tensor([0.7, 0.8, 0.3, 0.99]))
    y = torch.tensor([0, 1, 1, 0])
    assert certified_accuracy(certificates, y, 0.0) == 0.5
    assert certified_accuracy(certificates, y, 0.5) == 0.5
    assert certified_accuracy(certificates, y, 0.75) == 0.25
    assert certified_accuracy(certificates, y, 1.5) == 0.0


@pytest.mark.parametrize("override, key", [("eval.certify.n=0", "eval.certify.n"),
                                           ("eval.certify.alpha=1.5", "eval.certify.alpha"),
                                           ("eval.certify.radius_factors=[-1]", "eval.certify.radius_factors"),
                                           ("eval.certify.attack.steps=0", "steps")])
def test_bad_certification_settings_name_their_key(override, key, tmp_path):
    from robustlab.builders import build_evaluation
    from robustlab.errors import ConfigError

    cfg = compose_config(["defense=randomized_smoothing", "dataset=synthetic", override], tmp_path)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_evaluation(cfg)


def test_bad_certification_settings_are_refused_before_training(tmp_path):
    result = run_script("train.py", "defense=randomized_smoothing", *TINY, "eval.certify.n=0", output_root=tmp_path)
    assert result.returncode == 2
    assert "eval.certify.n=0" in result.stderr and "expected an integer ≥ 1" in result.stderr
    assert "Epoch" not in result.stdout + result.stderr


def test_randomized_smoothing_run_is_certified_and_checked(tmp_path):
    """`python train.py defense=randomized_smoothing`: the vote's accuracies, the certificates, the check, the
    figure, and the report's certified_l2 column."""
    result = run_script("train.py", "defense=randomized_smoothing", *TINY, "eval.n_samples=32",
                        "eval.audit.n_samples=16", "eval.audit.square_queries=50", "eval.certify.n_samples=48",
                        "eval.certify.n=300", output_root=tmp_path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    metrics = json.loads(next(tmp_path.rglob("metrics.json")).read_text())
    assert metrics["accuracy_draws"] == "vote" and metrics["randomized"]
    certification = metrics["certification"]
    assert certification["n_samples"] == 48 and certification["n"] == 300 and certification["sigma"] == 0.75
    assert certification["forward_passes_per_image"] == 400 and certification["ms_per_image"] > 0
    assert certification["radii"][-2] == certification["eps_l2"] == 1.5
    assert certification["certified_acc"] == certification["certified_accuracy"][-2]
    assert all(c <= a for c, a in zip(certification["certified_accuracy"], certification["attacked_accuracy"]))
    assert metrics["audit"]["certificate_violated"]["flagged"] is False
    assert set(metrics["curves"]) >= {CERTIFIED, ATTACKED}
    run_dir = next(tmp_path.rglob("metrics.json")).parent
    assert (run_dir / "certified_accuracy.png").stat().st_size > 0
    report = run_script_report(tmp_path)
    assert "certified_l2" in report


def run_script_report(directory) -> str:
    from robustlab.report import write_report

    return write_report(directory / "runs").get("markdown").read_text()


def test_smooth_adv_trains_on_l2_examples_through_the_noise(tmp_path):
    """`experiment=smooth_adv`: randomized smoothing whose training loss is on PGD-L2 examples at ε₂/2."""
    from robustlab.builders import build_classifier

    cfg = compose_config(["experiment=smooth_adv", "dataset=synthetic"], tmp_path)
    assert cfg.defense.attack.norm == "l2" and cfg.defense.attack.eps == 0.75
    classifier = build_classifier(cfg)
    assert isinstance(classifier.predictor(), SmoothedClassifier)
    x, y = torch.rand(8, 1, 28, 28), torch.arange(8)
    torch.manual_seed(0)
    adversarial = classifier.defense.training_loss(classifier.model, x, y).loss
    classifier.defense.attack = None
    torch.manual_seed(0)
    plain = classifier.defense.training_loss(classifier.model, x, y).loss
    assert adversarial > plain
