"""The uncertainty of an accuracy and the comparison of two, per image.

- `wilson_interval`: the 95% Wilson score interval of one accuracy measured on n images (one run). It stays
  inside [0, 1] and keeps its coverage near 0% and 100%, where the normal approximation does not.
- `over_seeds`: one accuracy measured by several trainings (seeds): mean, standard deviation, the number of
  seeds, and an interval that holds both sources of noise (the images, pooled; the seeds, a t-interval).
- `paired_test`: two predictors scored on the same images. On 0/1 correctness it is the exact McNemar test
  (a binomial test on the images exactly one of the two gets right); on fractional correctness (a randomized
  predictor's expected correctness, or a mean over seeds) it is its generalisation, the sign-flip
  randomisation test on the per-image differences, with a fixed seed so a rebuilt report is identical.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from scipy import stats

CONFIDENCE = 0.95
LEVEL = 0.05  # a difference is called significant below this p-value
ALTERNATIVES = ("two-sided", "greater", "less")


def wilson_interval(accuracy: float, n: int | float, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The Wilson score interval of an accuracy measured on `n` images ((0, 1) when n is 0)."""
    if n <= 0:
        return 0.0, 1.0
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    p = min(max(float(accuracy), 0.0), 1.0)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (0.0 if p == 0 else max(0.0, centre - half)), (1.0 if p == 1 else min(1.0, centre + half))


def half_width(interval: Sequence[float]) -> float:
    """Half the interval's width: the ± a table prints beside the accuracy."""
    return (interval[1] - interval[0]) / 2


def with_intervals(curve: dict, n: int) -> dict:
    """A robustness curve (accuracy per ε) measured on `n` images, with `n` and each point's interval."""
    return {**curve, "n": n, "interval": [list(wilson_interval(accuracy, n)) for accuracy in curve["accuracy"]]}


@dataclass
class SeedSummary:
    mean: float
    std: float  # over seeds (sample standard deviation; 0 for one seed)
    seeds: int
    interval: tuple[float, float]

    def to_dict(self) -> dict:
        return {**asdict(self), "interval": list(self.interval)}


def over_seeds(accuracies: Sequence[float], n: int, confidence: float = CONFIDENCE) -> SeedSummary:
    """Mean and spread of one accuracy over seeds, each measured on `n` images.

    The interval is the hull of the Wilson interval of all seeds' images pooled (the image noise) and, with
    two seeds or more, the t-interval of the mean over seeds (the training noise): with three seeds the
    t-interval alone can be accidentally narrow, and the pooled one ignores how much retraining moves it.
    """
    values = [float(value) for value in accuracies]
    seeds = len(values)
    mean = sum(values) / seeds
    std = math.sqrt(sum((value - mean) ** 2 for value in values) / (seeds - 1)) if seeds > 1 else 0.0
    low, high = wilson_interval(mean, n * seeds, confidence)
    if seeds > 1:
        t = float(stats.t.ppf(0.5 + confidence / 2, seeds - 1)) * std / math.sqrt(seeds)
        low, high = max(0.0, min(low, mean - t)), min(1.0, max(high, mean + t))
    return SeedSummary(mean, std, seeds, (low, high))


@dataclass
class PairedTest:
    """`a` and `b` on the same images: how many images favour each, and the p-value of "no difference"."""

    a_better: float  # images (or summed per-image differences) where a is more often right than b
    b_better: float
    p_value: float
    method: str  # "exact McNemar" or "sign-flip randomisation"

    def to_dict(self) -> dict:
        return asdict(self)


def paired_test(a: torch.Tensor | Sequence[float], b: torch.Tensor | Sequence[float],
                alternative: str = "two-sided", resamples: int = 20000) -> PairedTest:
    """Test the per-image correctness `a` against `b` (same images, same order).

    `alternative`: "greater" tests whether a is right more often than b, "less" the reverse, "two-sided"
    either. 0/1 differences: the exact McNemar test; fractional ones: a sign-flip randomisation test.
    """
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative={alternative!r}: expected one of {ALTERNATIVES}")
    a, b = torch.as_tensor(a, dtype=torch.float64).flatten(), torch.as_tensor(b, dtype=torch.float64).flatten()
    if a.shape != b.shape:
        raise ValueError(f"paired test: {a.numel()} vs {b.numel()} images; both must be scored on the same images")
    difference = a - b
    difference = difference[difference.abs() > 1e-12]
    a_better, b_better = float(difference.clamp(min=0).sum()), float((-difference).clamp(min=0).sum())
    if difference.numel() == 0:
        return PairedTest(0.0, 0.0, 1.0, "exact McNemar")
    if bool(((difference.abs() - 1).abs() < 1e-12).all()):
        test = stats.binomtest(int(round(a_better)), int(round(a_better + b_better)), 0.5, alternative=alternative)
        return PairedTest(a_better, b_better, float(test.pvalue), "exact McNemar")
    generator = torch.Generator().manual_seed(0)
    signs = torch.randint(0, 2, (resamples, difference.numel()), generator=generator, dtype=torch.float64) * 2 - 1
    observed, flipped = float(difference.sum()), (signs * difference).sum(dim=1)
    tolerance = 1e-9 * max(1.0, abs(observed))
    if alternative == "greater":
        extreme = int((flipped >= observed - tolerance).sum())
    elif alternative == "less":
        extreme = int((flipped <= observed + tolerance).sum())
    else:
        extreme = int((flipped.abs() >= abs(observed) - tolerance).sum())
    return PairedTest(a_better, b_better, (extreme + 1) / (resamples + 1), "sign-flip randomisation")
