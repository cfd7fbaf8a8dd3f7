"""The gradient-masking audit, run on every evaluated cell (after AutoAttack's checks and Carlini et al. 2019).

Each check is a number, a limit and a flag; a flag means the robust accuracy of that cell is probably
overestimated (masked or obfuscated gradients, an unconverged attack, or missing EOT), not that the defense
works. The checks run on the first `n` test images, on the deployed predictor:

- (a) `non_monotone_curve`: robust accuracy must not rise with ε (tolerance: one image), for every attack;
- (b) `large_eps_not_broken`: PGD-L∞ at ε = 0.5 must bring accuracy to chance + 2 pp;
- (c) `pgd_weaker_than_fgsm`: PGD must not leave standing significantly more images than FGSM does;
- (d) `black_box_beats_white_box`: Square must not break significantly more images than PGD;
- (e) `more_steps_help`: PGD with twice the steps must not break significantly more images;
  c, d and e run under L∞ at the dataset's ε∞, and again under L2 at its ε₂ (`…_l2`, the same letter): a
  defense can hold under one norm and mask its gradients under the other (TRADES, L∞-trained, falls to
  Square L2 far below PGD-20 L2: docs/RESULTS.md);
- (f) `zero_gradients`: at most 1% of images may have an all-zero input gradient;
- (g) `randomized_without_eot`: a randomized predictor (not a finite mixture, which is handled exactly) must
  be attacked with EOT by every attack of the suite;
- (h) `certificate_violated`: on a certified run (randomized smoothing), no image certified at an L2 radius r
  may change class under the L2 attack at ε < r (`robustlab.evaluation.certification`; `certificate_check`).

The robustness curves (check a, and the report's curves) are drawn for `eval.audit.curve_attacks`: every attack
of the evaluation when null. eval=matrix draws FGSM, the PGDs and A3, not APGD-CE (A3 is the stronger gradient
attack) nor Square (check d's attack): each curve runs its attack again at every ε of the grid but its own, where
the suite's per-image results are read (`Known`).

Checks c, d and e compare two attacks on the same images, so they are decided per image: the images the
first attack leaves standing and the second breaks against the reverse, by a one-sided exact McNemar test
(`statistics.paired_test`; a sign-flip test on a randomized predictor's fractional correctness) at the 5%
level. A flag then rests on evidence, not on a handful of images near a fixed margin; each such check keeps
its counts and p-value under `evidence`, and its `value` is the difference in accuracy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from robustlab.attacks.expectation import expected_correct, weighted_members
from robustlab.attacks.gradient import input_gradient
from robustlab.attacks.pgd import PGD
from robustlab.attacks.square import Square
from robustlab.errors import is_integer, is_number, require
from robustlab.evaluation.record import STILL_FLAGGED, TRUSTED
from robustlab.evaluation.statistics import LEVEL, paired_test, with_intervals
from robustlab.evaluation.threats import NORM_NAMES

LETTERS = {"non_monotone_curve": "a", "large_eps_not_broken": "b", "pgd_weaker_than_fgsm": "c",
           "pgd_weaker_than_fgsm_l2": "c", "black_box_beats_white_box": "d", "black_box_beats_white_box_l2": "d",
           "more_steps_help": "e", "more_steps_help_l2": "e", "zero_gradients": "f",
           "randomized_without_eot": "g", "certificate_violated": "h"}
NORM_SUFFIXES = {"linf": "", "l2": "_l2"}  # the paired checks' names under each norm


@dataclass
class Check:
    flagged: bool
    value: float
    limit: float
    detail: str
    evidence: dict | None = None  # paired checks: images each attack wins, the p-value, the test


def check_settings(settings: Mapping[str, Any], attack_names: list[str]) -> None:
    """Refuse bad `eval.audit.*` values (plain, resolved) before training; `attack_names`: the evaluation's
    attacks."""
    key = "eval.audit"
    require(isinstance(settings["enabled"], bool), f"{key}.enabled", settings["enabled"], "true or false")
    for name in ("n_samples", "pgd_steps", "square_queries"):
        require(is_integer(settings[name]) and settings[name] >= 1, f"{key}.{name}", settings[name], "an integer ≥ 1")
    factors = settings["curve_factors"]
    require(isinstance(factors, list) and len(factors) > 0 and all(is_number(f) and f >= 0 for f in factors),
            f"{key}.curve_factors", factors, "a non-empty list of numbers ≥ 0 (multiples of each attack's ε)")
    chosen = settings.get("curve_attacks")
    require(chosen is None or isinstance(chosen, list) and all(name in attack_names for name in chosen),
            f"{key}.curve_attacks", chosen,
            f"null (every attack of the evaluation) or a list of its attacks: {', '.join(attack_names)}")


def paired_check(stronger: torch.Tensor, weaker: torch.Tensor, what: str) -> Check:
    """Flag when the attack expected to be weaker breaks significantly more images than the stronger one:
    one-sided, per image (`stronger`, `weaker`: per-image correctness under each)."""
    test = paired_test(stronger, weaker, alternative="greater")
    difference = float(stronger.double().mean() - weaker.double().mean())
    return Check(test.p_value < LEVEL, difference, 0.0,
                 f"{what}: {test.a_better:g} image(s) against {test.b_better:g}, p = {test.p_value:.3g} "
                 f"({test.method})", test.to_dict())


def accuracy_under(attack: Callable, predictor: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   draws: int) -> torch.Tensor:
    """Per-image (expected) correctness on `attack`'s examples."""
    with torch.enable_grad():
        x_adv = attack(predictor, x, y)
    return expected_correct(predictor, x_adv, y, draws)


# What the evaluation's suite measured on the audit's images, by attack name: the attack, and each image's
# (expected) correctness under it. The audit reads these instead of running the same attack again: a curve at
# its attack's own ε, and checks c–e's FGSM and PGD where the suite ran that very PGD (`same_pgd`).
Known = Mapping[str, tuple[Any, torch.Tensor]]


def same_pgd(attack: Any, other: Any) -> bool:
    """Whether two attacks are the same PGD: robustlab's PGD, every setting equal (its repr names them all)."""
    return type(attack) is PGD and type(other) is PGD and repr(attack) == repr(other)


def robustness_curves(attacks: Mapping[str, tuple[Callable[[float], Callable], float]], predictor: nn.Module,
                      x: torch.Tensor, y: torch.Tensor, draws: int, factors: list[float],
                      known: Known | None = None) -> dict[str, dict]:
    """For each attack (a factory of ε and its default ε): accuracy at ε = factor × default. At the default ε,
    an attack the suite ran on these images (`known`) is read, not run again."""
    known = known or {}
    curves = {}
    for name, (factory, eps) in attacks.items():
        budgets = [factor * eps for factor in factors]
        accuracy = [float((known[name][1] if name in known and budget == eps else
                           accuracy_under(factory(budget), predictor, x, y, draws)).double().mean())
                    for budget in budgets]
        curves[name] = with_intervals({"default_eps": eps, "eps": budgets, "accuracy": accuracy}, len(y))
    return curves


def audit(predictor: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps_linf: float, num_classes: int,
          curves: dict[str, dict], draws: int, randomized: bool, eot_samples: Mapping[str, int | None],
          pgd_steps: int = 20, square_queries: int = 1000, eps_l2: float | None = None,
          known: Known | None = None) -> dict[str, dict]:
    """Run checks (b)–(g) on (x, y) and (a) on the given curves; every check's number, limit and flag. c, d
    and e run under L∞ at `eps_linf`, and under L2 at `eps_l2` unless it is None or 0; their FGSM and PGD are
    read from `known` where the suite ran the same PGD on these images."""
    n = len(y)
    one_image = 1.0 / n
    checks: dict[str, Check] = {}

    rises = [(name, i) for name, curve in curves.items() for i in range(1, len(curve["accuracy"]))
             if curve["accuracy"][i] > curve["accuracy"][i - 1] + one_image + 1e-9]
    worst_rise = max((curves[name]["accuracy"][i] - curves[name]["accuracy"][i - 1] for name, i in rises), default=0.0)
    checks["non_monotone_curve"] = Check(bool(rises), worst_rise, one_image,
                                         ", ".join(f"{name} rises at ε={curves[name]['eps'][i]:g}" for name, i in rises)
                                         or "every curve is non-increasing in ε")

    chance = 1.0 / num_classes
    large = float(accuracy_under(PGD(eps=0.5, steps=pgd_steps), predictor, x, y, draws).double().mean())
    checks["large_eps_not_broken"] = Check(large > chance + 0.02, large, chance + 0.02,
                                           f"PGD-{pgd_steps} L∞ at ε=0.5: accuracy {large:.3f}, chance {chance:.3f}")

    for norm, eps in (("linf", eps_linf), ("l2", eps_l2)):
        if eps:
            checks.update(paired_checks(predictor, x, y, norm, eps, draws, pgd_steps, square_queries, known or {}))

    gradient = input_gradient(predictor, x, y, draws)
    zero = float((gradient.flatten(1).abs().amax(dim=1) == 0).double().mean())
    checks["zero_gradients"] = Check(zero > 0.01, zero, 0.01, f"{zero:.1%} of images have an all-zero input gradient")

    needs_eot = randomized and weighted_members(predictor) is None
    without = sorted(name for name, samples in eot_samples.items() if samples == 1)
    checks["randomized_without_eot"] = Check(needs_eot and bool(without), float(needs_eot and bool(without)), 0.0,
                                             (f"randomized predictor attacked without EOT by {', '.join(without)}"
                                              if needs_eot and without else
                                              "randomized predictor, EOT everywhere" if needs_eot else
                                              "exact expectation over mixture members" if randomized else
                                              "deterministic predictor"))
    return {name: {**asdict(check), "letter": LETTERS[name]} for name, check in checks.items()}


def paired_checks(predictor: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str, eps: float, draws: int,
                  pgd_steps: int, square_queries: int, known: Known) -> dict[str, Check]:
    """Checks c, d and e under one norm: PGD against FGSM, Square and PGD with twice the steps, per image."""
    suffix, label = NORM_SUFFIXES[norm], NORM_NAMES[norm]
    pgd_name = f"PGD-{pgd_steps} {label}"

    def correctness(attack: PGD) -> torch.Tensor:
        read = [correct for suite_attack, correct in known.values() if same_pgd(attack, suite_attack)]
        return read[0] if read else accuracy_under(attack, predictor, x, y, draws)

    fgsm = correctness(PGD(norm=norm, eps=eps, steps=1, step_size=eps, random_start=False))
    pgd = correctness(PGD(norm=norm, eps=eps, steps=pgd_steps))
    square = accuracy_under(Square(norm=norm, eps=eps, queries=square_queries), predictor, x, y, draws)
    doubled = accuracy_under(PGD(norm=norm, eps=eps, steps=2 * pgd_steps), predictor, x, y, draws)
    return {
        "pgd_weaker_than_fgsm" + suffix: paired_check(pgd, fgsm, f"resist {pgd_name} but fall to FGSM {label}"),
        "black_box_beats_white_box" + suffix: paired_check(
            pgd, square, f"Square {label} {square.double().mean():.3f} vs {pgd_name} {pgd.double().mean():.3f}; "
                         f"resist {pgd_name} but fall to Square"),
        "more_steps_help" + suffix: paired_check(
            pgd, doubled, f"{pgd_name} {pgd.double().mean():.3f} vs PGD-{2 * pgd_steps} "
                          f"{doubled.double().mean():.3f}; resist {pgd_name} but fall to PGD-{2 * pgd_steps}"),
    }


def certificate_check(certification: Mapping) -> dict:
    """Check (h) from a certification record: flagged if any certified image changed class inside its radius."""
    soundness = certification["soundness"]
    flipped, checked = soundness["flipped"], soundness["checked"]
    detail = (f"{len(flipped)} of {checked} certified image(s) changed class under the L2 attack inside their "
              f"certified radius: test images {flipped}" if flipped else
              f"{checked} certified image(s) attacked inside their radius; none changed class")
    check = Check(bool(flipped), len(flipped) / max(checked, 1), 0.0, detail)
    return {**asdict(check), "letter": LETTERS["certificate_violated"]}


def trust(audit_record: Mapping[str, Mapping], escalation: Mapping) -> str:
    """A result's trust mark: the escalation's verdict; without one, "still flagged" for a flagged audit,
    "trusted" for a clean one, "" without an audit."""
    return escalation.get("trust") or (STILL_FLAGGED if flags(audit_record) else TRUSTED if audit_record else "")


def flags(audit_record: Mapping[str, Mapping]) -> str:
    """The letters of the flagged checks, each once, e.g. "cf" (empty: nothing flagged)."""
    return "".join(dict.fromkeys(check["letter"] for check in audit_record.values() if check["flagged"]))
