"""Certified L2 robustness of a smoothed classifier (Cohen et al. 2019's CERTIFY), checked against an attack.

For each of the first `eval.certify.n_samples` test images, `n0` noisy copies select a class c_A and `n` more
give a one-sided (1 − α) Clopper–Pearson lower bound p_A on P(f(x + δ) = c_A). Where p_A > 1/2 the smoothed
classifier provably answers c_A everywhere within the L2 radius σ·Φ⁻¹(p_A) (with probability at least 1 − α
over the draws); elsewhere it abstains. Certified accuracy at radius r is the fraction of images certified
with their true class at a radius ≥ r: a lower bound on the smoothed classifier's robust accuracy at r.

The same images are then attacked at every radius ε of the grid by the certification's L2 attack (PGD-L2,
EOT through the noise) and scored by a vote of `n` draws at level α:

- the *attacked* curve: accuracy of the vote after the attack, an upper bound on robust accuracy that the
  certified curve must stay under;
- the *soundness check*: an image certified at radius r > ε must keep c_A; if the vote answers another
  class, the certificate or the attack is wrong. The audit flags the run (h, `certificate_violated`) and
  the record lists the images.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.stats import beta, norm

from robustlab.defenses.base import evaluation_mode
from robustlab.errors import is_integer, is_number, require
from robustlab.evaluation.record import CERTIFIED
from robustlab.evaluation.statistics import with_intervals
from robustlab.models.smoothing import ABSTAIN
from robustlab.randomness import seed_all

ATTACKED = "attacked_l2"  # the vote's accuracy after the L2 attack, on the same images and radii


@dataclass
class Certificates:
    predicted: torch.Tensor  # the certified class c_A per image, or ABSTAIN
    radius: torch.Tensor  # its certified L2 radius (0 where it abstains)
    p_lower: torch.Tensor  # the lower confidence bound on P(f(x + δ) = c_A)


def certifiable(predictor) -> bool:
    """Whether the predictor is a smoothed classifier: a noise level and noisy class counts."""
    return callable(getattr(predictor, "class_counts", None)) and hasattr(predictor, "sigma")


def lower_confidence_bound(successes: torch.Tensor, trials: int, alpha: float) -> torch.Tensor:
    """One-sided (1 − α) Clopper–Pearson lower bound on a binomial proportion, elementwise (0 for 0 successes)."""
    k = successes.cpu().numpy().astype(np.float64)
    bound = np.where(k > 0, beta.ppf(alpha, np.maximum(k, 1), trials - k + 1), 0.0)
    return torch.as_tensor(bound, dtype=torch.float64)


def radius(p_lower: torch.Tensor, sigma: float) -> torch.Tensor:
    """The certified L2 radius σ·Φ⁻¹(p_A) for a lower bound p_A > 1/2 (Cohen et al. 2019, Theorem 1)."""
    return sigma * torch.as_tensor(norm.ppf(p_lower.numpy()), dtype=torch.float64)


def certify(classifier, x: torch.Tensor, n0: int, n: int, alpha: float, sigma: float | None = None) -> Certificates:
    """CERTIFY on each image of `x`. `sigma`: the σ the radius is computed with; None for the classifier's own
    (anything else is wrong, and only the soundness check's test passes it)."""
    selected = classifier.class_counts(x, n0).argmax(1)
    counts = classifier.class_counts(x, n)
    successes = counts.gather(1, selected[:, None])[:, 0]
    p_lower = lower_confidence_bound(successes, n, alpha)
    certified = p_lower > 0.5
    radii = torch.where(certified, radius(p_lower.clamp(min=0.5), classifier.sigma if sigma is None else sigma),
                        torch.zeros_like(p_lower))
    predicted = torch.where(certified.to(x.device), selected, torch.full_like(selected, ABSTAIN))
    return Certificates(predicted.cpu(), radii.float(), p_lower.float())


def certified_accuracy(certificates: Certificates, y: torch.Tensor, at: float) -> float:
    """The fraction of images certified with their true class at a radius ≥ `at`."""
    hits = (certificates.predicted == y.cpu()) & (certificates.radius >= at)
    return float(hits.double().mean()) if len(y) else 0.0


def check_settings(settings: Mapping[str, Any]) -> None:
    """`eval.certify` (plain, resolved), checked before anything trains (`builders.build_evaluation` then builds
    its attack once, so that its config is checked too)."""
    def need(condition: bool, field: str, allowed: str) -> None:
        require(condition, f"eval.certify.{field}", settings.get(field), allowed)

    need(isinstance(settings.get("enabled"), bool), "enabled", "true or false")
    n_samples: Any = settings.get("n_samples")
    need(is_integer(n_samples) and (n_samples >= 1 or n_samples == -1), "n_samples",
         "an integer ≥ 1, or -1 for the whole test split")
    need(is_integer(settings.get("n0")) and settings["n0"] >= 1, "n0", "an integer ≥ 1")
    need(is_integer(settings.get("n")) and settings["n"] >= 1, "n", "an integer ≥ 1")
    need(is_number(settings.get("alpha")) and 0 < settings["alpha"] < 1, "alpha", "a number in (0, 1)")
    factors = settings.get("radius_factors")
    need(factors is not None and len(factors) >= 1 and all(is_number(f) and f >= 0 for f in factors),
         "radius_factors", "a non-empty list of numbers ≥ 0 (radii as multiples of the dataset's ε₂)")
    need(is_integer(settings.get("batch_size")) and settings["batch_size"] >= 1, "batch_size", "an integer ≥ 1")
    need(settings.get("attack") is not None, "attack", "an L2 attack config, e.g. /attack@certify.attack: pgd_l2")


def certify_and_check(settings: Mapping[str, Any] | None, attack_at: Callable[[float], Any], predictor,
                      x: torch.Tensor, y: torch.Tensor, eps_l2: float, seed: int) -> dict:
    """Certify the first images, attack them at every radius of the grid, check the certificates; the record.

    `settings`: `eval.certify` (plain, resolved; its `attack` the config that `attack_at(eps)` builds at
    radius eps); `eps_l2`: the dataset's ε₂; `seed`: the run's. Returns {} when `eval.certify.enabled` is
    false or the predictor is not a smoothed classifier.
    """
    if settings is None or not settings["enabled"] or not certifiable(predictor):
        return {}
    seed_all(seed)  # the same certificates for the same run
    n0, n, alpha, batch_size = (settings[key] for key in ("n0", "n", "alpha", "batch_size"))
    limit = len(y) if settings["n_samples"] == -1 else settings["n_samples"]
    x, y = x[:limit], y[:limit]
    radii = [round(float(factor) * eps_l2, 9) for factor in settings["radius_factors"]]
    batches = [slice(start, start + batch_size) for start in range(0, len(y), batch_size)]

    started = time.perf_counter()
    with evaluation_mode(predictor):
        parts = [certify(predictor, x[part], n0, n, alpha) for part in batches]
    certificates = Certificates(*(torch.cat([getattr(part, name) for part in parts])
                                  for name in ("predicted", "radius", "p_lower")))
    certify_seconds = time.perf_counter() - started

    started = time.perf_counter()
    attacked, flipped, checked = [], set[int](), torch.zeros(len(y), dtype=torch.bool)
    for eps in radii:
        attack = attack_at(eps)
        decided = torch.cat([_attacked_vote(predictor, attack, x[part], y[part], n, alpha) for part in batches])
        attacked.append(float((decided == y.cpu()).double().mean()))
        # Images certified beyond ε must keep their class. Those certified with a wrong class are attacked
        # again, away from that class (the attack above aimed away from the true one).
        must_hold = (certificates.predicted != ABSTAIN) & (certificates.radius > eps) if eps > 0 else \
            torch.zeros(len(y), dtype=torch.bool)
        wrong = torch.nonzero(must_hold & (certificates.predicted != y.cpu()))[:, 0]
        if len(wrong):
            target = certificates.predicted[wrong].to(y.device)
            decided[wrong] = _attacked_vote(predictor, attack, x[wrong.to(x.device)], target, n, alpha)
        checked |= must_hold
        flipped.update(int(i) for i in torch.nonzero(must_hold & (decided != ABSTAIN)
                                                      & (decided != certificates.predicted))[:, 0])
    check_seconds = time.perf_counter() - started

    return {
        "sigma": float(predictor.sigma), "n0": n0, "n": n, "alpha": float(alpha),
        "n_samples": len(y), "eps_l2": eps_l2,
        "certified_acc": certified_accuracy(certificates, y, eps_l2),  # at the dataset's ε₂
        "radii": radii,
        "certified_accuracy": [certified_accuracy(certificates, y, r) for r in radii],
        "attacked_accuracy": attacked,
        "attack": settings["attack"],
        "abstained": float((certificates.predicted == ABSTAIN).double().mean()),
        "max_radius": float(certificates.radius.max()) if len(y) else 0.0,
        "ms_per_image": 1000.0 * certify_seconds / max(len(y), 1),
        "forward_passes_per_image": n0 + n,
        "soundness": {"checked": int(checked.sum()), "flipped": sorted(flipped),
                      "ms_per_image": 1000.0 * check_seconds / max(len(y), 1)},
    }


def _attacked_vote(predictor, attack, x: torch.Tensor, y: torch.Tensor, n: int, alpha: float) -> torch.Tensor:
    """The vote of `n` draws at level `alpha` on the attack's examples against label `y`."""
    with torch.enable_grad(), evaluation_mode(predictor):
        x_adv = attack(predictor, x, y)
    with evaluation_mode(predictor):
        return predictor.vote(x_adv, votes=n, alpha=alpha).cpu()


def curves(record: dict) -> dict[str, dict]:
    """The certified and attacked curves, in the robustness curves' format (accuracy vs ε, default ε = ε₂)."""
    if not record:
        return {}
    return {name: with_intervals({"default_eps": record["eps_l2"], "eps": record["radii"], "accuracy": record[key]},
                                 record["n_samples"])
            for name, key in ((CERTIFIED, "certified_accuracy"), (ATTACKED, "attacked_accuracy"))}
