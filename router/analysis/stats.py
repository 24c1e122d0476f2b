"""Statistical tests as pure functions over summary statistics (no I/O, no records).

Every function returns a small frozen result that names its method, in the style of
``scipy.stats``. Undefined cases (no data, zero variance, a control mean of 0) give an explicit
``state`` and ``None`` values, never NaN and never an exception. Conventions: arm 1 is the
champion (control), arm 2 the challenger; differences are challenger minus champion.

Consistency rules: a p-value and the interval beside it come from the same test (the interval
excludes the null value exactly when p < α); a degenerate case (no variance in either arm) is
reported as such, with p = 1 and no interval (as GrowthBook's gbstats does), never as p = 0 and a
zero-width interval; a result in state ``not_enough_data`` carries no p-value. The always-valid
(sequential) counterparts are in :mod:`router.analysis.sequential` and :func:`msprt`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as st
from scipy.optimize import brentq
from scipy.special import rel_entr

from router.analysis.sequential import multinomial_log_mixture, normal_mixture_ci

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


@dataclass(frozen=True, slots=True)
class SRMResult:
    statistic: float | None
    pvalue: float | None
    observed: tuple[int, ...]
    expected_shares: tuple[float, ...]
    max_share_diff: float | None
    mismatch: bool
    method: str = "Pearson chi-square goodness of fit of units per variant"
    state: str = OK
    sequential_pvalue: float | None = None


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


def two_proportion_ztest(x1: float, n1: float, x2: float, n2: float) -> TestResult:
    """Pooled two-proportion z-test of ``p2 - p1`` (two-sided); equals statsmodels
    ``proportions_ztest([x2, x1], [n2, n1])``. It is the score test of ``p2 - p1 = 0``, so it
    agrees with :func:`proportion_diff`'s interval."""
    method = "two-proportion z-test, pooled variance (the score test at a difference of 0)"
    if n1 < 1 or n2 < 1:
        return TestResult(None, None, method, NOT_ENOUGH_DATA)
    p = (x1 + x2) / (n1 + n2)
    var = p * (1 - p) * (1 / n1 + 1 / n2)
    if not var > 0:
        return TestResult(None, 1.0, method, ZERO_VARIANCE)
    z = (x2 / n2 - x1 / n1) / math.sqrt(var)
    return TestResult(z, float(2 * st.norm.sf(abs(z))), method)


def wilson_interval(x: float, n: float, alpha: float = 0.05) -> Interval:
    """Wilson score interval of a proportion."""
    if n <= 0:
        return Interval(None, None)
    z = float(st.norm.ppf(1 - alpha / 2))
    p = x / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return Interval(max(0.0, centre - half), min(1.0, centre + half))


def _bisect_root(fn: Callable[[float], bool], rejected: float, accepted: float) -> float:
    """The boundary between a ``rejected`` and an ``accepted`` value of a monotone test."""
    if not fn(rejected):
        return rejected
    a, b = rejected, accepted
    for _ in range(100):
        mid = (a + b) / 2
        if fn(mid):
            a = mid
        else:
            b = mid
        if abs(b - a) <= 1e-15:
            break
    return b


def _score_z_2indep(x1: float, n1: float, x2: float, n2: float, delta: float) -> float:
    """Score statistic of ``p2 - p1 = delta`` for independent binomials (Mee 1984: no
    ``n/(n-1)`` correction), with the restricted maximum-likelihood proportions in the closed
    form of Farrington & Manning (1990): the root of ``a p³ + b p² + c p + d`` for the
    challenger's proportion, ``θ = n1/n2``. Checked against a numerical maximisation of the
    likelihood in the test suite."""
    num = x2 / n2 - x1 / n1 - delta
    if delta == 0.0:
        p_ch = p_cp = (x1 + x2) / (n1 + n2)
    else:
        ph_ch, ph_cp = x2 / n2, x1 / n1
        th = n1 / n2
        a = 1 + th
        b = -(1 + th + ph_ch + th * ph_cp + delta * (th + 2))
        c = delta * delta + delta * (2 * ph_ch + th + 1) + ph_ch + th * ph_cp
        d = -ph_ch * delta * (1 + delta)
        v = b**3 / (3 * a) ** 3 - b * c / (6 * a * a) + d / (2 * a)
        u = math.copysign(math.sqrt(max(b * b / (3 * a) ** 2 - c / (3 * a), 0.0)), v)
        if u == 0.0:
            p_ch = -b / (3 * a)
        else:
            w = (math.pi + math.acos(max(-1.0, min(1.0, v / u**3)))) / 3
            p_ch = 2 * u * math.cos(w) - b / (3 * a)
        p_ch = min(max(p_ch, max(0.0, delta)), min(1.0, 1.0 + delta))
        p_cp = p_ch - delta
    var = p_ch * (1 - p_ch) / n2 + p_cp * (1 - p_cp) / n1
    if not var > 0:
        return 0.0 if abs(num) < 1e-15 else math.copysign(math.inf, num)
    return num / math.sqrt(var)


def proportion_diff(x1: float, n1: float, x2: float, n2: float, alpha: float = 0.05) -> DiffResult:
    """``p2 - p1`` of independent proportions with the score interval (Mee 1984; the inversion
    of the score test, which at a difference of 0 is the pooled z-test: the p-value and the
    interval come from one test). Valid at small counts: one errored request out of one is an
    interval of most of [-1, 1], not [1, 1]. (statsmodels 0.15's ``method="score"`` differs
    slightly: its restricted estimate is not the likelihood's maximum, see the test suite.)"""
    method = "difference of proportions: score interval (Mee) and pooled z-test (its value at 0)"
    if n1 < 1 or n2 < 1:
        return DiffResult(None, Interval(None, None), None, None, None, method, NOT_ENOUGH_DATA)
    d = x2 / n2 - x1 / n1
    z = float(st.norm.ppf(1 - alpha / 2))
    lo = _bisect_root(lambda t: _score_z_2indep(x1, n1, x2, n2, t) > z, -1.0, d)
    hi = _bisect_root(lambda t: _score_z_2indep(x1, n1, x2, n2, t) < -z, 1.0, d)
    test = two_proportion_ztest(x1, n1, x2, n2)
    return DiffResult(d, Interval(lo, hi), test.pvalue, test.statistic, None, method, test.state)


def _score_z_paired(b: float, c: float, n: float, delta: float) -> float:
    """Tango's (1998) score statistic of ``δ = π_c − π_b = delta`` for paired binary data
    (``c``: pairs where only the challenger has the event, ``b``: only the champion). The
    restricted MLE of ``π_b`` solves ``2n x² − [(b + c) + δ(c − b − 2n)] x − b δ(1 − δ) = 0``."""
    big_b = (b + c) + delta * (c - b - 2 * n)
    x = (big_b + math.sqrt(max(big_b * big_b + 8 * n * b * delta * (1 - delta), 0.0))) / (4 * n)
    x = min(max(x, max(0.0, -delta)), (1 - delta) / 2)
    var = n * (2 * x + delta - delta * delta)
    num = c - b - n * delta
    if not var > 0:
        return 0.0 if abs(num) < 1e-12 else math.copysign(math.inf, num)
    return num / math.sqrt(var)


def paired_proportion_diff(b: int, c: int, n: int, alpha: float = 0.05) -> DiffResult:
    """Difference of two paired proportions, ``(c − b) / n`` (``c``: only the challenger has the
    event, ``b``: only the champion), with Tango's score interval and the same score test's
    p-value. At a difference of 0 the score test is McNemar's chi-square *without* continuity
    correction, so the p-value and the interval agree; :func:`mcnemar` is the classic test of no
    difference (exact below 25 discordant pairs) and is reported beside it."""
    method = "paired difference of proportions: Tango score interval and score test"
    if n < 1:
        return DiffResult(None, Interval(None, None), None, None, None, method, NOT_ENOUGH_DATA)
    d = (c - b) / n
    z = float(st.norm.ppf(1 - alpha / 2))
    lo = _bisect_root(lambda t: _score_z_paired(b, c, n, t) > z, -1.0, d)
    hi = _bisect_root(lambda t: _score_z_paired(b, c, n, t) < -z, 1.0, d)
    if b + c == 0:
        return DiffResult(d, Interval(lo, hi), 1.0, None, None, method, OK)
    stat = (c - b) / math.sqrt(b + c)
    return DiffResult(d, Interval(lo, hi), float(2 * st.norm.sf(abs(stat))), stat, None, method)


def srm_test(
    observed: Sequence[int],
    expected_shares: Sequence[float],
    alpha: float = 0.001,
    min_share_diff: float = 0.001,
    tau: float = 0.1,
) -> SRMResult:
    """Sample ratio mismatch of units per arm against the configured shares.

    Sufficiency is judged on the *total* (as GrowthBook does), never on the smallest observed
    arm: an arm that should have units and has none is the clearest mismatch there is. The
    fixed-horizon ``pvalue`` is Pearson's chi-square (equals ``scipy.stats.chisquare`` and
    gbstats ``check_srm``) when every expected count is at least 5, else the exact binomial
    test (two arms). The decision uses the always-valid ``sequential_pvalue`` (a
    Dirichlet-multinomial mixture centred on the configured shares, ``1/Λ`` by Ville's
    inequality), because the controller re-checks it at every look: a mismatch needs
    ``sequential p < alpha`` *and* a share deviating by more than ``min_share_diff`` (as
    Statsig does), so huge samples do not alarm on trivia."""
    obs = tuple(int(x) for x in observed)
    exp_sh = tuple(float(x) for x in expected_shares)
    total = sum(obs)
    if any(s <= 0 for s in exp_sh) or len(obs) < 2:
        return SRMResult(None, None, obs, exp_sh, None, False, state="not_applicable")
    s = sum(exp_sh)
    shares = [e / s for e in exp_sh]
    if total == 0:
        return SRMResult(None, None, obs, tuple(shares), None, False, state=NOT_ENOUGH_DATA)
    expected = [total * e for e in shares]
    if min(expected) >= 5 or len(obs) > 2:
        stat = sum((o - e) ** 2 / e for o, e in zip(obs, expected, strict=True))
        p = float(st.chi2.sf(stat, len(obs) - 1))
        method = "Pearson chi-square goodness of fit of units per variant"
    else:
        stat = float(obs[1])
        p = float(st.binomtest(obs[1], total, shares[1]).pvalue)
        method = "exact binomial test of units per variant (an expected count below 5)"
    log_m = float(multinomial_log_mixture(np.asarray(obs, float), shares, tau))
    seq_p = 1.0 if log_m <= 0 else math.exp(-log_m)
    diff = max(abs(o / total - e) for o, e in zip(obs, shares, strict=True))
    mismatch = seq_p < alpha and diff > min_share_diff
    return SRMResult(stat, p, obs, tuple(shares), diff, mismatch,
                     method=method + "; decided by the always-valid Dirichlet-multinomial "
                     "mixture p-value", sequential_pvalue=seq_p)  # fmt: skip


def mcnemar(b: int, c: int, exact: bool | None = None) -> TestResult:
    """McNemar's test of no difference on the discordant counts ``b`` (only model 1 right) and
    ``c`` (only model 2 right): the exact (conditional binomial) test when there are fewer than
    25 discordant pairs, else the chi-square with continuity correction ``(|b − c| − 1)² / (b +
    c)`` (the default; ``exact`` forces either); equals
    ``statsmodels.stats.contingency_tables.mcnemar(exact=b + c < 25, correction=True)``."""
    n = b + c
    if exact is None:
        exact = n < 25
    if n == 0:
        return TestResult(None, 1.0, "McNemar (no discordant pairs)", NOT_ENOUGH_DATA)
    if exact:
        stat = float(min(b, c))
        p = float(min(1.0, 2 * st.binom.cdf(stat, n, 0.5)))
        return TestResult(stat, p, "McNemar exact binomial")
    chi = (abs(b - c) - 1) ** 2 / n
    return TestResult(chi, float(st.chi2.sf(chi, 1)), "McNemar chi-square, continuity corrected")


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


def mde(variance_of_diff: float, alpha: float = 0.05, power: float = 0.8) -> float | None:
    """Minimum detectable (absolute) effect at the current sample: ``(z_{1-α/2} + z_power)·SE``
    (normal approximation to the fixed-horizon two-sided test; the sequential interval needs
    more, see the analyst guide)."""
    if not (variance_of_diff > 0):
        return None
    return (float(st.norm.ppf(1 - alpha / 2)) + float(st.norm.ppf(power))) * math.sqrt(
        variance_of_diff
    )


def n_per_arm_proportions(p1: float, p2: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Units per arm to detect ``p1`` vs ``p2`` (two-sided), Cohen's h arcsine effect size
    under the normal approximation (``2·arcsin√p`` is approximately normal with variance
    ``1/n``); equals statsmodels ``NormalIndPower().solve_power(proportion_effectsize(p2, p1))``.
    A fixed-horizon size: an always-valid test needs more (see the analyst guide)."""
    h = abs(2 * math.asin(math.sqrt(p2)) - 2 * math.asin(math.sqrt(p1)))
    if h == 0:
        return math.inf
    za = float(st.norm.ppf(1 - alpha / 2))

    def shortfall(n: float) -> float:  # two-sided power, both tails, as statsmodels solves it
        d = h * math.sqrt(n / 2)
        return float(st.norm.sf(za - d) + st.norm.cdf(-za - d)) - power

    guess = 2 * ((za + float(st.norm.ppf(power))) / h) ** 2
    return float(brentq(shortfall, 1e-6, guess * 2 + 10, xtol=1e-10))


def n_per_arm_means(sd: float, delta: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Units per arm to detect a mean difference ``delta`` with common SD ``sd``, under the
    normal approximation: ``n = 2 (z_{1-α/2} + z_power)² sd² / delta²`` (fixed horizon)."""
    if delta == 0 or sd <= 0:
        return math.inf
    z = float(st.norm.ppf(1 - alpha / 2)) + float(st.norm.ppf(power))
    return 2 * (z * sd / delta) ** 2


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


def cohen_kappa(confusion: np.ndarray) -> float | None:
    """Cohen's kappa of a square confusion matrix (rows champion, columns challenger)."""
    n = float(confusion.sum())
    if n == 0:
        return None
    po = float(np.trace(confusion)) / n
    pe = float((confusion.sum(0) * confusion.sum(1)).sum()) / (n * n)
    if pe >= 1.0:
        return 1.0 if po >= 1.0 else None
    return (po - pe) / (1 - pe)


def psi(
    reference: Sequence[float] | np.ndarray,
    current: Sequence[float] | np.ndarray,
    eps: float = 1e-4,
) -> float | None:
    """Population stability index ``Σ (c - r) ln(c / r)`` over bin shares; empty bins are
    filled with ``eps`` (then renormalised) so the index stays finite."""
    r = np.asarray(reference, dtype=float)
    c = np.asarray(current, dtype=float)
    if r.sum() <= 0 or c.sum() <= 0:
        return None
    r = np.maximum(r / r.sum(), eps)
    c = np.maximum(c / c.sum(), eps)
    r, c = r / r.sum(), c / c.sum()
    return float(np.sum((c - r) * np.log(c / r)))


def psi_band(value: float | None) -> str:
    """The usual reading of a PSI: < 0.1 stable, 0.1–0.25 moderate shift, ≥ 0.25 major shift."""
    if value is None:
        return "unknown"
    return "stable" if value < 0.1 else "moderate" if value < 0.25 else "major"


@dataclass(frozen=True, slots=True)
class QuantileInterval:
    """1-based order-statistic ranks ``[X_(low), X_(high)]`` of a distribution-free interval of
    a quantile; ``low = 0`` / ``high = n + 1`` when that side does not exist at this n."""

    low: int
    high: int
    n: int
    min_n: int
    state: str = OK


def quantile_min_n(q: float, alpha: float = 0.05) -> int:
    """The smallest n whose two-sided order-statistic interval of the ``q`` quantile has an
    upper rank within the sample: ``1 − q^n ≥ 1 − α/2``, i.e. ``n ≥ log(α/2) / log(q)``
    (72 for p95, 368 for p99 at α = 0.05); the lower rank needs ``n ≥ log(α/2)/log(1 − q)``."""
    need_hi = math.ceil(math.log(alpha / 2) / math.log(q) - 1e-12)
    need_lo = math.ceil(math.log(alpha / 2) / math.log(1 - q) - 1e-12)
    return max(need_hi, need_lo)


def quantile_interval(n: int, q: float, alpha: float = 0.05) -> QuantileInterval:
    """Distribution-free interval of the ``q`` quantile from order statistics with coverage
    ``≥ 1 − α`` (the count of observations below the quantile is Binomial(n, q)): ranks
    ``binom.ppf(α/2)`` and ``binom.ppf(1 − α/2) + 1``. When a rank falls outside ``1..n`` that
    side is missing and the state is ``not_enough_data``: clipping it to the sample's extreme
    would under-cover (0.62 instead of 0.95 for p99 at n = 100)."""
    need = quantile_min_n(q, alpha)
    if n < 1:
        return QuantileInterval(0, n + 1, n, need, NOT_ENOUGH_DATA)
    lo = int(st.binom.ppf(alpha / 2, n, q))
    hi = int(st.binom.ppf(1 - alpha / 2, n, q)) + 1
    state = OK if lo >= 1 and hi <= n else NOT_ENOUGH_DATA
    return QuantileInterval(max(lo, 0), min(hi, n + 1), n, need, state)


def auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC by the Mann-Whitney rank statistic (ties count one half)."""
    y = labels.astype(bool)
    npos = int(y.sum())
    nneg = y.size - npos
    if npos == 0 or nneg == 0:
        return None
    ranks = st.rankdata(scores)
    return float((ranks[y].sum() - npos * (npos + 1) / 2) / (npos * nneg))


def _weighted_auc(group: np.ndarray, ngroups: int, y: np.ndarray, w: np.ndarray) -> float | None:
    """AUC with case weights ``w`` over scores pre-grouped into tied, ascending ``group`` ids."""
    wp, wn = w * y, w * (1 - y)
    tp, tn = wp.sum(), wn.sum()
    if tp <= 0 or tn <= 0:
        return None
    neg = np.bincount(group, weights=wn, minlength=ngroups)
    pos = np.bincount(group, weights=wp, minlength=ngroups)
    below = np.cumsum(neg) - neg
    return float((pos * (below + 0.5 * neg)).sum() / (tp * tn))


def paired_bootstrap_auc_diff(
    labels: np.ndarray,
    s1: np.ndarray,
    s2: np.ndarray,
    resamples: int = 500,
    alpha: float = 0.05,
    seed: int = 20261122,
) -> tuple[float | None, Interval]:
    """AUC(s2) - AUC(s1) on the same labelled requests, with a paired percentile bootstrap CI.

    Each of ``resamples`` draws takes n requests with replacement (counts of n uniform draws from
    numpy's PCG64 seeded with ``seed``) and recomputes both AUCs on the same draw; scores are ranked
    once, so a draw costs O(n)."""
    y = labels.astype(float)
    a1, a2 = auc(labels, s1), auc(labels, s2)
    if a1 is None or a2 is None:
        return None, Interval(None, None)
    u1, g1 = np.unique(s1, return_inverse=True)
    u2, g2 = np.unique(s2, return_inverse=True)
    rng = np.random.default_rng(seed)
    n = y.size
    diffs = []
    for _ in range(resamples):
        w = np.bincount(rng.integers(0, n, n), minlength=n).astype(float)
        b1 = _weighted_auc(g1, u1.size, y, w)
        b2 = _weighted_auc(g2, u2.size, y, w)
        if b1 is not None and b2 is not None:
            diffs.append(b2 - b1)
    if len(diffs) < 10:
        return a2 - a1, Interval(None, None)
    lo, hi = np.quantile(diffs, [alpha / 2, 1 - alpha / 2])
    return a2 - a1, Interval(float(lo), float(hi))


def jensen_shannon(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon distance (natural log) of two histograms, as
    ``scipy.spatial.distance.jensenshannon`` (whose module takes 0.1 s to import)."""
    p = np.asarray(p, dtype=float) / np.sum(p)
    q = np.asarray(q, dtype=float) / np.sum(q)
    m = (p + q) / 2
    return float(np.sqrt(max((rel_entr(p, m).sum() + rel_entr(q, m).sum()) / 2, 0.0)))


def disparity_ratio(rates: Sequence[float]) -> float | None:
    """Lowest positive-decision rate over the highest (the four-fifths rule wants >= 0.8)."""
    rs = [r for r in rates if r is not None]
    if len(rs) < 2 or max(rs) <= 0:
        return None
    return min(rs) / max(rs)
