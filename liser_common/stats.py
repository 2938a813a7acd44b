"""Statistics for numbers worth publishing, by scipy and statsmodels (no hand-written tests).

* :func:`t_interval` -- mean and its confidence interval over repeats (seeds, folds): Student's t
  with n - 1 degrees of freedom. Repeats of one recipe are the unit: clips of one run are not
  independent draws.
* :func:`speaker_bootstrap` -- the interval of one run's WA or UAR by resampling its *test
  speakers* (whole speakers, with their clips: clips of one speaker are not independent).
* :func:`paired_comparison` -- A against B over the same seeds/folds: mean difference, its
  t-interval, the paired t-test and, where n allows, the Wilcoxon signed-rank test.
* :func:`holm` -- Holm's step-down correction of a family of p-values.
* :func:`repeats_needed` -- how many paired repeats a difference of a given size needs at a
  given spread of the differences (power of the paired t-test).

Example::

    >>> iv = t_interval([0.50, 0.56, 0.53])
    >>> round(iv.mean, 3), iv.n, round(iv.low, 3), round(iv.high, 3)
    (0.53, 3, 0.455, 0.605)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

#: The confidence level of every interval LiSER prints, unless a caller asks for another.
CONFIDENCE = 0.95
#: Below this many repeats a table says its intervals are too few to trust.
MIN_REPEATS = 3
#: The two-sided signed-rank test cannot reach p < 0.05 with fewer paired repeats (2 / 2**5).
MIN_WILCOXON = 6


@dataclass(frozen=True)
class Interval:
    """A mean (or point estimate) with its confidence interval; NaN bounds when n < 2."""

    mean: float
    low: float
    high: float
    n: int
    std: float = math.nan
    confidence: float = CONFIDENCE
    method: str = "t"

    def to_dict(self) -> dict:
        return asdict(self)

    def text(self, digits: int = 3) -> str:
        """``0.530 [0.455, 0.605]`` (``0.530 [n=1]`` without an interval)."""
        if math.isnan(self.low):
            return f"{self.mean:.{digits}f} [n={self.n}]"
        return f"{self.mean:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


#: the range of every score LiSER reports (WA, UAR, macro-F1): an interval of their mean stays in it
SCORE_RANGE = (0.0, 1.0)


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE,
               bounds: tuple[float, float] | None = None) -> Interval:
    """Mean of ``values`` and its Student-t confidence interval (sample std, n - 1 d.o.f.).
    ``bounds``: the range the quantity lives in (:data:`SCORE_RANGE` for scores, ``(-1, 1)``
    for their differences); the interval is cut to it (a t-interval of a mean near 1 over few
    runs otherwise reaches past 1, a score no run can have).

    Example::

        >>> iv = t_interval([0.97, 1.0, 0.99], bounds=SCORE_RANGE)
        >>> round(iv.low, 3), iv.high
        (0.949, 1.0)
    """
    iv = _t_interval(values, confidence)
    if bounds is None or iv.low != iv.low:
        return iv
    lo, hi = bounds
    return Interval(iv.mean, min(max(iv.low, lo), hi), max(min(iv.high, hi), lo), iv.n, iv.std, iv.confidence)


def _t_interval(values: Sequence[float], confidence: float) -> Interval:
    from scipy import stats

    x = np.asarray(list(values), dtype=float)
    n = len(x)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, math.nan, confidence)
    mean = float(x.mean())
    if n == 1:
        return Interval(mean, math.nan, math.nan, 1, math.nan, confidence)
    std = float(x.std(ddof=1))
    if std == 0.0:
        return Interval(mean, mean, mean, n, 0.0, confidence)
    low, high = stats.t.interval(confidence, df=n - 1, loc=mean, scale=stats.sem(x))
    return Interval(mean, float(low), float(high), n, std, confidence)


def _score(labels: np.ndarray, preds: np.ndarray, metric: str, num_classes: int) -> float:
    if metric == "accuracy":
        return float((labels == preds).mean())
    support = np.bincount(labels, minlength=num_classes)
    hits = np.bincount(labels[labels == preds], minlength=num_classes)
    present = support > 0
    return float((hits[present] / support[present]).mean())


def speaker_bootstrap(
    labels: Sequence[int],
    preds: Sequence[int],
    speakers: Sequence[str],
    *,
    metric: str = "uar",
    num_classes: int | None = None,
    confidence: float = CONFIDENCE,
    n_resamples: int = 2000,
    seed: int = 0,
) -> Interval:
    """One run's ``metric`` (``uar``: mean recall over the classes present; ``accuracy``: WA)
    with a percentile bootstrap interval over its test speakers: each resample draws whole
    speakers with replacement (scipy.stats.bootstrap over speaker indices). With few test
    speakers (4 in a RAVDESS fold) the interval is coarse; it is still the honest one."""
    from scipy import stats

    if metric not in ("uar", "accuracy"):
        raise ValueError(f"metric must be 'uar' or 'accuracy', not {metric!r}")
    y, p = np.asarray(labels, dtype=int), np.asarray(preds, dtype=int)
    k = int(num_classes if num_classes is not None else max(y.max(initial=0), p.max(initial=0)) + 1)
    names = sorted(set(speakers), key=str)
    rows = [np.flatnonzero(np.asarray([s == name for s in speakers])) for name in names]
    point = _score(y, p, metric, k)
    if len(names) < 2:
        return Interval(point, math.nan, math.nan, len(names), method="speaker bootstrap")

    def statistic(idx: np.ndarray) -> float:
        take = np.concatenate([rows[int(i)] for i in idx])
        return _score(y[take], p[take], metric, k)

    res = stats.bootstrap(
        (np.arange(len(names)),), statistic, vectorized=False, n_resamples=n_resamples,
        confidence_level=confidence, method="percentile", random_state=np.random.default_rng(seed),
    )
    ci = res.confidence_interval
    return Interval(point, float(ci.low), float(ci.high), len(names), float(res.standard_error),
                    confidence, "speaker bootstrap")


@dataclass(frozen=True)
class Comparison:
    """A against B over paired repeats (the same seeds/folds)."""

    n: int
    mean_diff: float  # mean of a - b
    low: float
    high: float
    t_p: float  # two-sided paired t-test
    wilcoxon_p: float | None  # two-sided signed-rank test (None: n < MIN_WILCOXON)
    sd_diff: float

    def to_dict(self) -> dict:
        return asdict(self)


#: decimals scores are compared at in paired tests (results.csv keeps 6)
SCORE_DECIMALS = 6


def paired_comparison(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> Comparison:
    """``a`` against ``b``, element i of each from the same seed/fold: the mean difference and
    its t-interval, the paired t-test (scipy.stats.ttest_rel) and the Wilcoxon signed-rank test
    (scipy.stats.wilcoxon) when n >= :data:`MIN_WILCOXON`. Differences without any spread leave
    the t-test undefined: p is NaN (1 when they are all 0), never a made-up 0."""
    from scipy import stats

    # scores to the precision they are kept at (results.csv: 6 decimals; metrics.json: float32):
    # the same count of clips read back as 0.321428 and 0.321429 is no spread to test
    x = np.round(np.asarray(list(a), dtype=float), SCORE_DECIMALS)
    y = np.round(np.asarray(list(b), dtype=float), SCORE_DECIMALS)
    if len(x) != len(y):
        raise ValueError(f"paired samples must have the same length ({len(x)} and {len(y)})")
    d = x - y
    iv = t_interval(d, confidence, bounds=(-1.0, 1.0))
    n = len(d)
    if n < 2:
        return Comparison(n, iv.mean, math.nan, math.nan, math.nan, None, math.nan)
    eps = 2 * 10.0**-SCORE_DECIMALS  # each side rounded once: differences of equal counts differ by 1e-6
    if np.ptp(d) <= eps:  # no spread (up to the scores' rounding): t is undefined, not p = 1e-6
        t_p = 1.0 if abs(float(d.mean())) <= eps else math.nan
    else:
        t_p = float(stats.ttest_rel(x, y).pvalue)
    w_p = None
    if n >= MIN_WILCOXON:
        w_p = 1.0 if np.all(np.abs(d) <= eps) else float(stats.wilcoxon(x, y).pvalue)
    return Comparison(n, iv.mean, iv.low, iv.high, t_p, w_p, iv.std)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values (statsmodels' ``multipletests(method="holm")``), in input order;
    NaN stays NaN and is not counted in the family."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(list(pvalues), dtype=float)
    out = np.full(len(p), np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = multipletests(p[ok], method="holm")[1]
    return [float(v) for v in out]


def _paired_t_power(n: int, d: float, alpha: float) -> float:
    """A two-sided one-sample/paired t-test's power at effect size ``d`` with ``n`` pairs: the
    noncentral t's tails as an integral over the chi-square of the variance (scipy), which stays
    finite where the closed forms underflow."""
    import scipy.stats as st
    from scipy.integrate import quad

    df = n - 1
    crit, ncp = float(st.t.ppf(1 - alpha / 2, df)), d * math.sqrt(n)

    def given(v: float) -> float:
        c = crit * math.sqrt(v / df)
        return float((st.norm.sf(c - ncp) + st.norm.cdf(-c - ncp)) * st.chi2.pdf(v, df))

    return quad(given, 0, math.inf, limit=200)[0]


def repeats_needed(sd_diff: float, delta: float, *, alpha: float = 0.05, power: float = 0.8) -> int | None:
    """Paired repeats (seeds/folds) for a two-sided paired t-test at ``alpha`` to detect a mean
    difference ``delta`` with ``power``, when the differences spread with ``sd_diff``
    (statsmodels' TTestPower). None when the spread is unknown (NaN)."""
    from statsmodels.stats.power import TTestPower

    if math.isnan(sd_diff) or delta == 0:
        return None
    if sd_diff == 0:
        return 2
    # the smallest n whose power reaches ``power``, searched with the power function itself:
    # solve_power returns NaN where it fails to converge (a spread of 1e-6 against a 0.02
    # difference: scores rounded to 6 decimals), which crashed the board
    tp, d = TTestPower(), abs(delta) / sd_diff
    if d >= 100:  # 2 repeats have power ~1 (noncentrality >= 141 against t = 12.7); the t-distribution
        return 2  # functions give NaN far beyond it

    def enough(n: int) -> bool:
        p = float(tp.power(effect_size=d, nobs=n, alpha=alpha, alternative="two-sided"))
        if p != p:  # statsmodels' noncentral t is NaN for large effects at small n (d = 20, n = 2)
            p = _paired_t_power(n, d, alpha)
        return p >= power

    if enough(2):
        return 2
    lo, hi = 2, 4
    while not enough(hi):
        lo, hi = hi, hi * 2
        if hi > 10**8:
            return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if enough(mid) else (mid, hi)
    return hi
