"""Intervals and paired tests against reference values (Newcombe 1998; the binomial distribution by hand)."""

from __future__ import annotations

import pytest
import torch

from robustlab.evaluation.statistics import over_seeds, paired_test, wilson_interval


@pytest.mark.parametrize("successes,n,low,high", [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605),
                                                 (0, 20, 0.0, 0.1611), (29, 29, 0.8830, 1.0)])
def test_wilson_interval_matches_newcombes_reference_values(successes, n, low, high):
    """Newcombe (1998), Statistics in Medicine 17:857, Table I, method 3 (the Wilson score interval)."""
    interval = wilson_interval(successes / n, n)
    assert interval == pytest.approx((low, high), abs=5e-5)


def test_wilson_interval_narrows_with_more_images_and_stays_inside_0_1():
    widths = [wilson_interval(0.644, n)[1] - wilson_interval(0.644, n)[0] for n in (100, 1000, 10000)]
    assert widths[0] > widths[1] > widths[2]
    assert abs(widths[1] / 2 - 0.0296) < 5e-4  # the "64.4 ±3.0" of one matrix cell on 1000 images
    assert wilson_interval(0.0, 50)[0] == 0.0 and wilson_interval(1.0, 50)[1] == 1.0


def test_mcnemar_is_exact_on_the_discordant_images():
    """10 images only a gets right, 5 only b: two-sided p = 2·P(X ≤ 5), X ~ Bin(15, ½) = 2·4944/32768."""
    a = [1] * 10 + [0] * 5 + [1] * 50 + [0] * 35
    b = [0] * 10 + [1] * 5 + [1] * 50 + [0] * 35
    test = paired_test(a, b)
    assert (test.a_better, test.b_better, test.method) == (10, 5, "exact McNemar")
    assert test.p_value == pytest.approx(2 * 4944 / 32768, rel=1e-12)
    assert paired_test(a, b, "greater").p_value == pytest.approx(4944 / 32768, rel=1e-12)
    assert paired_test(a, a).p_value == 1.0  # no discordant image: no evidence of a difference


def test_a_win_and_a_tie():
    win = paired_test([1] * 12 + [0] * 88, [0] * 100)
    assert win.p_value == pytest.approx(2 * 0.5 ** 12) and win.p_value < 0.05
    tie = paired_test([1] * 3 + [0] * 97, [0] * 3 + [1] * 2 + [0] * 95)
    assert tie.p_value == 1.0


def test_fractional_correctness_uses_the_sign_flip_test():
    """A randomized predictor's expected correctness (0.5 here) is not 0/1: the randomisation test, which on
    0/1 differences would be McNemar's, answers; a clear difference is significant, a balanced one is not."""
    clear = paired_test([0.5] * 30 + [0.0] * 70, [0.0] * 100)
    assert clear.method == "sign-flip randomisation" and clear.p_value < 1e-3
    balanced = paired_test(torch.tensor([0.5, 0.0] * 50), torch.tensor([0.0, 0.5] * 50))
    assert balanced.p_value > 0.5


def test_over_seeds_holds_both_the_image_and_the_seed_noise():
    one = over_seeds([0.644], 1000)
    assert (one.mean, one.std, one.seeds) == (0.644, 0.0, 1) and one.interval == wilson_interval(0.644, 1000)
    three = over_seeds([0.60, 0.65, 0.70], 1000)
    assert three.std == pytest.approx(0.05)
    assert three.interval[0] <= 0.65 - 4.3027 * 0.05 / 3 ** 0.5 + 1e-4  # the t-interval is the wider here
