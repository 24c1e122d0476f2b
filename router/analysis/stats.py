"""Fixed-horizon tests of a difference of means, and the result objects every test returns (pure
functions over summary statistics: no I/O, no records).

Every function returns a small frozen result that names its method, in the style of
``scipy.stats``. Undefined cases (no data, zero variance, a control mean of 0) give an explicit
``state`` and ``None`` values, never NaN and never an exception. Conventions: arm 1 is the
champion (control), arm 2 the challenger; differences are challenger minus champion.

Consistency rules: a p-value and the interval beside it come from the same test (the interval
excludes the null value exactly when p < α); a degenerate case (no variance in either arm) is
reported as such, with p = 1 and no interval (as GrowthBook's gbstats does), never as p = 0 and a
zero-width interval; a result in state ``not_enough_data`` carries no p-value. The always-valid
(sequential) counterparts are in :mod:`router.analysis.sequential` and :func:`msprt`.

The other statistics follow the same rules, one family per module:
:mod:`router.analysis.proportions` (proportions, sample ratio, McNemar),
:mod:`router.analysis.quantiles` (distribution-free quantile intervals),
:mod:`router.analysis.sample_size` (MDE and units per arm) and
:mod:`router.analysis.measures` (descriptive measures: PSI, Jensen-Shannon, kappa, AUC, disparity).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as st

from router.analysis.sequential import normal_mixture_ci

OK = "ok"
NOT_ENOUGH_DATA = "not_enough_data"
ZERO_VARIANCE = "zero_variance"
CONTROL_MEAN_ZERO = "control_mean_zero"


def _finite(x: float | None) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


@dataclass(frozen=True, slots=True)
class Interval:
    low: float | None
    high: float | None

    def as_list(self) -> list[float | None]:
        return [_finite(self.low), _finite(self.high)]


@dataclass(frozen=True, slots=True)
class DiffResult:
    """A difference of means: estimate, confidence interval and p-value."""

    estimate: float | None
    ci: Interval
    pvalue: float | None
    statistic: float | None
    df: float | None
    method: str
    state: str = OK


@dataclass(frozen=True, slots=True)
class RatioResult:
    """Relative difference ``(m2 - m1) / m1`` with a delta-method interval; ``variance`` is the
    delta-method variance of the estimate (for the sequential form, :func:`msprt`)."""

    estimate: float | None
    ci: Interval
    method: str = "delta method (first-order Taylor), normal interval"
    state: str = OK
    variance: float | None = None


@dataclass(frozen=True, slots=True)
class TestResult:
    statistic: float | None
    pvalue: float | None
    method: str
    state: str = OK


@dataclass(frozen=True, slots=True)
class SequentialResult:
    """Always-valid p-value and confidence sequence of a difference (mSPRT, normal mixture)."""

    pvalue: float | None
    ci: Interval
    tau: float | None
    method: str = "mSPRT with a N(0, tau^2) mixture (Johari et al. 2017), always valid"
    state: str = OK


def _nobs_ok(*ns: float) -> bool:
    return all(n >= 2 for n in ns)


def welch(
    m1: float, v1: float, n1: float, m2: float, v2: float, n2: float, alpha: float = 0.05
) -> DiffResult:
    """Welch's unequal-variance t-test and CI for ``m2 - m1`` from per-arm mean, sample
    variance (ddof=1) and n; equals ``scipy.stats.ttest_ind_from_stats(equal_var=False)``."""
    method = "Welch two-sample t-test (unequal variances), Welch-Satterthwaite df"
    if not _nobs_ok(n1, n2):
        return DiffResult(None, Interval(None, None), None, None, None, method, NOT_ENOUGH_DATA)
    d = m2 - m1
    se1, se2 = v1 / n1, v2 / n2
    se2sum = se1 + se2
    if not se2sum > 0.0:
        # degenerate: every value equal within each arm; no test is possible (a difference of
        # constants is not evidence about the populations' spread)
        return DiffResult(d, Interval(None, None), 1.0, None, None, method, ZERO_VARIANCE)
    p, lo, hi, t, df = welch_arrays(m1, v1, n1, m2, v2, n2, alpha)
    return DiffResult(d, Interval(float(lo), float(hi)), float(p), float(t), float(df), method)


def welch_arrays(
    m1: np.ndarray | float, v1: np.ndarray | float, n1: np.ndarray | float,
    m2: np.ndarray | float, v2: np.ndarray | float, n2: np.ndarray | float, alpha: float = 0.05,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """The core of :func:`welch`, vectorised: ``(p, ci_low, ci_high, t, df)`` for arms with at
    least two observations and a positive variance sum (the caller handles the other states)."""
    se1 = np.asarray(v1, float) / np.asarray(n1, float)
    se2 = np.asarray(v2, float) / np.asarray(n2, float)
    se2sum = se1 + se2
    d = np.asarray(m2, float) - np.asarray(m1, float)
    se = np.sqrt(se2sum)
    df = se2sum**2 / (se1**2 / (np.asarray(n1, float) - 1) + se2**2 / (np.asarray(n2, float) - 1))
    t = d / se
    p = 2.0 * st.t.sf(np.abs(t), df)
    q = st.t.ppf(1 - alpha / 2, df)
    return p, d - q * se, d + q * se, t, df


def relative_uplift(
    m1: float, v1: float, n1: float, m2: float, v2: float, n2: float, alpha: float = 0.05
) -> RatioResult:
    """``(m2 - m1) / m1`` with the delta-method variance of the ratio of independent means:
    ``Var(m2/m1) ≈ v2/(n2 m1²) + m2² v1/(n1 m1⁴)``."""
    if not _nobs_ok(n1, n2):
        return RatioResult(None, Interval(None, None), state=NOT_ENOUGH_DATA)
    if m1 == 0:
        return RatioResult(None, Interval(None, None), state=CONTROL_MEAN_ZERO)
    r = m2 / m1 - 1.0
    var = v2 / (n2 * m1**2) + m2**2 * v1 / (n1 * m1**4)
    if not var > 0:
        return RatioResult(r, Interval(None, None), state=ZERO_VARIANCE, variance=0.0)
    z = float(st.norm.ppf(1 - alpha / 2))
    h = z * math.sqrt(var)
    return RatioResult(r, Interval(r - h, r + h), variance=var)


def ratio_variance(
    k: np.ndarray | float,
    mean_x: np.ndarray | float,
    mean_n: np.ndarray | float,
    cxx: np.ndarray | float,
    cnn: np.ndarray | float,
    cxn: np.ndarray | float,
) -> tuple[np.ndarray, np.ndarray]:
    """A ratio of sums over ``k`` independent clusters (units), ``R = ΣX / ΣN``, and the
    per-cluster variance of its delta-method approximation (Deng et al. 2018, "Applying the
    delta method in metric analytics"; equals gbstats ``RatioStatistic``):
    ``(s²_X − 2 R s_XN + R² s²_N) / N̄²`` with sample (co)variances across clusters, from the
    centred sums ``cxx = Σ (X − X̄)²`` etc. (vectorised). ``Var(R) ≈ variance / k``: requests of
    one unit are correlated, so they are not counted as independent observations."""
    k = np.asarray(k, float)
    mx, mn = np.asarray(mean_x, float), np.asarray(mean_n, float)
    ok = (k >= 2) & (mn > 0)
    kk = np.where(ok, k - 1, 1.0)
    mn_ = np.where(mn > 0, mn, 1.0)
    ratio = np.where(mn > 0, mx / mn_, 0.0)
    var = (np.asarray(cxx) - 2 * ratio * np.asarray(cxn) + ratio**2 * np.asarray(cnn)) / kk
    return ratio, np.where(ok, np.maximum(var / mn_**2, 0.0), 0.0)


def log_mse_ratio(
    n: np.ndarray | float,
    m0: np.ndarray | float,
    m1: np.ndarray | float,
    c00: np.ndarray | float,
    c11: np.ndarray | float,
    c01: np.ndarray | float,
) -> tuple[np.ndarray, np.ndarray]:
    """``log(MSE_1 / MSE_0)`` from the paired squared errors of two models on the same ``n``
    requests (means ``m0, m1``, centred sums of squares and cross-products ``c00, c11, c01``),
    and the delta-method variance of that estimate,
    ``(s²_1/m1² + s²_0/m0² − 2 s_01/(m0 m1)) / n`` (vectorised; NaN where undefined)."""
    n = np.asarray(n, float)
    m0, m1 = np.asarray(m0, float), np.asarray(m1, float)
    ok = (n >= 2) & (m0 > 0) & (m1 > 0)
    nn = np.where(ok, n, 2.0)
    a0, a1 = np.where(ok, m0, 1.0), np.where(ok, m1, 1.0)
    k = nn - 1
    var = (np.asarray(c11) / k / a1**2 + np.asarray(c00) / k / a0**2
           - 2 * np.asarray(c01) / k / (a0 * a1)) / nn  # fmt: skip
    return np.where(ok, np.log(a1 / a0), np.nan), np.where(ok, var, np.nan)


def paired_mean(n: float, s: float, ss: float, alpha: float = 0.05) -> DiffResult:
    """Paired t-test of per-pair differences from their count, sum and sum of squares (equals
    ``scipy.stats.ttest_rel`` / ``ttest_1samp`` of the differences)."""
    method = "paired t-test on per-pair differences"
    if n < 2:
        return DiffResult(None, Interval(None, None), None, None, None, method, NOT_ENOUGH_DATA)
    m = s / n
    var = max((ss - n * m * m) / (n - 1), 0.0)
    return paired_mean_centred(n, m, var * (n - 1), alpha)


def paired_mean_centred(n: float, mean: float, m2: float, alpha: float = 0.05) -> DiffResult:
    """:func:`paired_mean` from the count, mean and centred sum of squares ``Σ (d − mean)²`` of
    the differences (Welford moments: no cancellation when the differences are tiny against the
    values, e.g. predictions near 1e8 differing by 0.5)."""
    method = "paired t-test on per-pair differences"
    if n < 2:
        return DiffResult(None, Interval(None, None), None, None, None, method, NOT_ENOUGH_DATA)
    m = mean
    var = max(m2 / (n - 1), 0.0)
    if not var > 0 or var <= 1e-28 * m * m:
        # degenerate: every difference equal; no test is possible
        return DiffResult(m, Interval(None, None), 1.0, None, n - 1, method, ZERO_VARIANCE)
    se = math.sqrt(var / n)
    t = m / se
    p = float(2 * st.t.sf(abs(t), n - 1))
    q = float(st.t.ppf(1 - alpha / 2, n - 1))
    return DiffResult(m, Interval(m - q * se, m + q * se), p, t, n - 1, method)


def msprt(estimate: float, variance: float, tau: float, alpha: float = 0.05) -> SequentialResult:
    """Always-valid inference for a difference ``estimate ~ N(theta, variance)``.

    Mixture likelihood ratio against theta = 0 with ``theta ~ N(0, tau²)``:
    ``Λ = sqrt(V / (V + τ²)) · exp(τ² d² / (2 V (V + τ²)))``; the always-valid p-value is
    ``min(1, 1/Λ)`` and the confidence sequence ``d ± sqrt(V (V+τ²)/τ² · (log((V+τ²)/V) +
    2 log(1/α)))``. Both stay valid however often the analyst looks (Ville's inequality); the
    scalar form of :func:`router.analysis.sequential.normal_mixture_ci`.
    """
    if not (variance > 0) or not (tau > 0):
        return SequentialResult(None, Interval(None, None), _finite(tau), state=ZERO_VARIANCE)
    p, lo, hi = normal_mixture_ci(estimate, variance, tau, alpha)
    return SequentialResult(float(p), Interval(float(lo), float(hi)), tau)


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm step-down adjusted p-values (equals statsmodels ``multipletests(method='holm')``);
    ``None`` entries are skipped."""
    idx = [i for i, p in enumerate(pvalues) if p is not None]
    m = len(idx)
    order = sorted(idx, key=lambda i: pvalues[i])  # type: ignore[arg-type,return-value]
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        p = pvalues[i]
        assert p is not None
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out
