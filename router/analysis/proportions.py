"""Tests and intervals of proportions and counts (pure; the conventions of
:mod:`router.analysis.stats`): independent and paired differences of proportions with score
intervals, the Wilson interval, the sample-ratio-mismatch test and McNemar's test.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as st

from router.analysis.sequential import multinomial_log_mixture
from router.analysis.stats import (
    NOT_ENOUGH_DATA,
    OK,
    ZERO_VARIANCE,
    DiffResult,
    Interval,
    TestResult,
)


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
