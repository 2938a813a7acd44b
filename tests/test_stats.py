"""liser_common.stats against hand computation and scipy/statsmodels' own primitives."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as st

from liser_common.stats import (
    MIN_WILCOXON,
    holm,
    paired_comparison,
    repeats_needed,
    speaker_bootstrap,
    t_interval,
)


def test_t_interval_by_hand():
    iv = t_interval([0.50, 0.56, 0.53])
    sem = 0.03 / math.sqrt(3)  # sample sd 0.03
    half = 4.302652729911275 * sem  # t quantile 0.975 at 2 degrees of freedom (tables)
    assert iv.mean == pytest.approx(0.53) and iv.n == 3 and iv.std == pytest.approx(0.03)
    assert (iv.low, iv.high) == pytest.approx((0.53 - half, 0.53 + half))
    assert math.isnan(t_interval([0.4]).low) and t_interval([0.4]).text() == "0.400 [n=1]"


def test_an_interval_narrows_with_more_repeats():
    pattern = [0.48, 0.55, 0.51, 0.58]
    widths = [t_interval(pattern * k).high - t_interval(pattern * k).low for k in (1, 2, 4, 8)]
    assert widths == sorted(widths, reverse=True) and widths[-1] < widths[0] / 4


def test_paired_comparison_against_scipy_on_hand_made_numbers():
    a = [0.52, 0.61, 0.55, 0.58, 0.60, 0.57]
    b = [0.41, 0.47, 0.49, 0.44, 0.50, 0.46]
    c = paired_comparison(a, b)
    d = np.subtract(a, b)
    assert c.n == 6 and c.mean_diff == pytest.approx(d.mean())
    half = st.t.ppf(0.975, 5) * d.std(ddof=1) / math.sqrt(6)
    assert (c.low, c.high) == pytest.approx((d.mean() - half, d.mean() + half))
    assert c.t_p == pytest.approx(st.ttest_rel(a, b).pvalue)
    assert c.t_p < 0.001 and c.wilcoxon_p == pytest.approx(2 / 2**6)  # all six differences positive: exact


def test_a_difference_inside_the_noise_is_not_significant():
    base = [0.50, 0.55, 0.47, 0.52, 0.58, 0.49]
    noise = [0.03, -0.04, 0.02, -0.03, 0.01, -0.02]
    c = paired_comparison([x + e for x, e in zip(base, noise)], base)
    assert c.t_p > 0.5 and c.wilcoxon_p > 0.5 and c.low < 0 < c.high


def test_few_repeats_and_no_spread_are_said_not_invented():
    assert paired_comparison([0.5, 0.6, 0.7], [0.4, 0.5, 0.6]).wilcoxon_p is None  # n < MIN_WILCOXON
    assert MIN_WILCOXON == 6 and 2 / 2**5 > 0.05  # why: five pairs cannot reach p < 0.05
    same = paired_comparison([0.5, 0.6, 0.7], [0.4, 0.5, 0.6])
    assert math.isnan(same.t_p)  # a constant difference has no spread: t is undefined, not p = 0
    assert paired_comparison([0.5, 0.6], [0.5, 0.6]).t_p == 1.0


def test_holm_by_hand():
    # sorted: 0.01 * 3 = 0.03; 0.03 * 2 = 0.06; max(0.06, 0.04 * 1) = 0.06
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    out = holm([0.02, float("nan"), 0.5])
    assert out[0] == pytest.approx(0.04) and math.isnan(out[1]) and out[2] == pytest.approx(0.5)


def test_repeats_needed_reaches_the_power_and_one_fewer_does_not():
    def power(n, es, alpha=0.05):  # the paired t-test's power: the noncentral t by integration over chi2
        from scipy.integrate import quad

        df, crit, ncp = n - 1, st.t.ppf(1 - alpha / 2, n - 1), es * math.sqrt(n)

        def given(v):  # P(|Z + ncp| > crit * sqrt(v / df)) for V = v
            c = crit * math.sqrt(v / df)
            return (st.norm.sf(c - ncp) + st.norm.cdf(-c - ncp)) * st.chi2.pdf(v, df)

        return quad(given, 0, math.inf, limit=200)[0]

    for sd, delta in ((0.05, 0.05), (0.1, 0.05), (0.03, 0.02)):
        n = repeats_needed(sd, delta)
        assert power(n, delta / sd) >= 0.8 > power(n - 1, delta / sd)
    assert repeats_needed(0.1, 0.05) > repeats_needed(0.05, 0.05)
    assert repeats_needed(float("nan"), 0.05) is None
    # a tiny spread against the difference (scores read back at 6 decimals): statsmodels'
    # solve_power returned NaN and the board crashed (ValueError: cannot convert float NaN)
    assert repeats_needed(1e-17, 0.02) == 2
    for sd in (7e-7, 1e-3, 0.005):
        n = repeats_needed(sd, 0.02)
        assert n >= 2 and (n == 2 or power(n - 1, 0.02 / sd) < 0.8) and power(n, 0.02 / sd) >= 0.8


def test_speaker_bootstrap_resamples_whole_speakers():
    # four speakers, each right on exactly one of their two clips (one per class): every
    # resample of whole speakers scores 0.5, so the interval has no width
    labels = [0, 1] * 4
    preds = [0, 0, 1, 1, 0, 0, 1, 1]
    spk = ["a", "a", "b", "b", "c", "c", "d", "d"]
    iv = speaker_bootstrap(labels, preds, spk, num_classes=2, n_resamples=200)
    assert iv.mean == pytest.approx(0.5) and iv.n == 4 and iv.low == pytest.approx(0.5) == iv.high
    # speakers that differ: the interval holds the point estimate and has width
    preds2 = [0, 1, 0, 1, 0, 0, 1, 0]
    iv2 = speaker_bootstrap(labels, preds2, spk, num_classes=2, n_resamples=500)
    assert iv2.low < iv2.mean < iv2.high
    assert math.isnan(speaker_bootstrap(labels, preds, ["a"] * 8).low)  # one speaker: no interval


def test_an_interval_of_scores_stays_in_their_range():
    """A t-interval of a mean near 1 over three runs reached past 1 (a UAR no run can have): cut
    to the range it is given, the mean and the other end as scipy computes them."""
    from scipy import stats

    from liser_common.stats import SCORE_RANGE, t_interval

    x = [0.97, 1.0, 0.99]
    low, high = stats.t.interval(0.95, df=2, loc=np.mean(x), scale=stats.sem(x))
    assert high > 1.0  # the plain interval leaves the range
    iv = t_interval(x, bounds=SCORE_RANGE)
    assert iv.high == 1.0 and iv.low == pytest.approx(low) and iv.mean == pytest.approx(np.mean(x))
    assert t_interval([0.01, 0.0, 0.03], bounds=SCORE_RANGE).low == 0.0
    plain = t_interval(x)
    assert plain.high == pytest.approx(high)  # without bounds: as scipy gives it
