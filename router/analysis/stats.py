"""Statistical tests as pure functions over summary statistics (no I/O, no records).

Every function returns a small frozen result that names its method, in the style of
``scipy.stats``. Undefined cases (no data, zero variance, a control mean of 0) give an explicit
``state`` and ``None`` values, never NaN and never an exception. Conventions: arm 1 is the
champion (control), arm 2 the challenger; differences are challenger minus champion.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as st
from scipy.optimize import brentq
from scipy.special import rel_entr

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
    """Relative difference ``(m2 - m1) / m1`` with a delta-method interval."""

    estimate: float | None
    ci: Interval
    method: str = "delta method (first-order Taylor), normal interval"
    state: str = OK


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
    if se2sum <= 0.0:
        state = ZERO_VARIANCE
        p = 1.0 if d == 0 else 0.0
        return DiffResult(d, Interval(d, d), p, None, None, method, state)
    se = math.sqrt(se2sum)
    df = se2sum**2 / (se1**2 / (n1 - 1) + se2**2 / (n2 - 1))
    t = d / se
    p = float(2.0 * st.t.sf(abs(t), df))
    q = float(st.t.ppf(1 - alpha / 2, df))
    return DiffResult(d, Interval(d - q * se, d + q * se), p, t, df, method)


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
    z = float(st.norm.ppf(1 - alpha / 2))
    h = z * math.sqrt(max(var, 0.0))
    return RatioResult(r, Interval(r - h, r + h))


def two_proportion_ztest(x1: float, n1: float, x2: float, n2: float) -> TestResult:
    """Pooled two-proportion z-test of ``p2 - p1`` (two-sided); equals statsmodels
    ``proportions_ztest([x2, x1], [n2, n1])``."""
    method = "two-proportion z-test, pooled variance"
    if n1 < 1 or n2 < 1:
        return TestResult(None, None, method, NOT_ENOUGH_DATA)
    p = (x1 + x2) / (n1 + n2)
    var = p * (1 - p) * (1 / n1 + 1 / n2)
    d = x2 / n2 - x1 / n1
    if var <= 0:
        return TestResult(None, 1.0 if d == 0 else 0.0, method, ZERO_VARIANCE)
    z = d / math.sqrt(var)
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


def proportion_diff(x1: float, n1: float, x2: float, n2: float, alpha: float = 0.05) -> DiffResult:
    """``p2 - p1`` with an unpooled Wald interval and the pooled z-test p-value."""
    method = "difference of proportions: Wald CI (unpooled), pooled z-test p-value"
    if n1 < 1 or n2 < 1:
        return DiffResult(None, Interval(None, None), None, None, None, method, NOT_ENOUGH_DATA)
    p1, p2 = x1 / n1, x2 / n2
    d = p2 - p1
    se = math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    z = float(st.norm.ppf(1 - alpha / 2))
    test = two_proportion_ztest(x1, n1, x2, n2)
    state = OK if se > 0 else ZERO_VARIANCE
    return DiffResult(
        d, Interval(d - z * se, d + z * se), test.pvalue, test.statistic, None, method, state
    )


def srm_test(
    observed: Sequence[int],
    expected_shares: Sequence[float],
    alpha: float = 0.001,
    min_share_diff: float = 0.001,
    min_per_arm: int = 8,
) -> SRMResult:
    """Sample ratio mismatch: chi-square of observed counts against configured shares (equals
    ``scipy.stats.chisquare``). A mismatch needs ``p < alpha`` *and* an absolute share deviation
    above ``min_share_diff`` (as Statsig does), so huge samples do not alarm on trivia."""
    obs = tuple(int(x) for x in observed)
    exp_sh = tuple(float(x) for x in expected_shares)
    total = sum(obs)
    if any(s <= 0 for s in exp_sh) or len(obs) < 2:
        return SRMResult(None, None, obs, exp_sh, None, False, state="not_applicable")
    if min(obs) < min_per_arm:
        return SRMResult(None, None, obs, exp_sh, None, False, state=NOT_ENOUGH_DATA)
    s = sum(exp_sh)
    shares = [e / s for e in exp_sh]
    expected = [total * e for e in shares]
    stat = sum((o - e) ** 2 / e for o, e in zip(obs, expected, strict=True))
    p = float(st.chi2.sf(stat, len(obs) - 1))
    diff = max(abs(o / total - e) for o, e in zip(obs, shares, strict=True))
    return SRMResult(stat, p, obs, tuple(shares), diff, p < alpha and diff > min_share_diff)


def mcnemar(b: int, c: int, exact: bool | None = None) -> TestResult:
    """McNemar's test on the discordant counts ``b`` (only model 1 right) and ``c`` (only
    model 2 right). Exact binomial when ``b + c < 25`` (default) else chi-square with
    continuity correction; equals ``statsmodels.stats.contingency_tables.mcnemar``."""
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
    if var <= 1e-300:
        return DiffResult(
            m, Interval(m, m), 1.0 if m == 0 else 0.0, None, n - 1, method, ZERO_VARIANCE
        )
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
    2 log(1/α)))``. Both stay valid however often the analyst looks (Ville's inequality).
    """
    if not (variance > 0) or not (tau > 0):
        return SequentialResult(None, Interval(None, None), _finite(tau), state=ZERO_VARIANCE)
    v, t2 = variance, tau * tau
    log_lr = 0.5 * math.log(v / (v + t2)) + t2 * estimate**2 / (2 * v * (v + t2))
    p = 1.0 if log_lr <= 0 else math.exp(-log_lr)
    half = math.sqrt(v * (v + t2) / t2 * (math.log((v + t2) / v) + 2 * math.log(1 / alpha)))
    return SequentialResult(min(1.0, p), Interval(estimate - half, estimate + half), tau)


def mde(variance_of_diff: float, alpha: float = 0.05, power: float = 0.8) -> float | None:
    """Minimum detectable (absolute) effect at the current sample: ``(z_{1-α/2} + z_power)·SE``."""
    if not (variance_of_diff > 0):
        return None
    return (float(st.norm.ppf(1 - alpha / 2)) + float(st.norm.ppf(power))) * math.sqrt(
        variance_of_diff
    )


def n_per_arm_proportions(p1: float, p2: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Units per arm to detect ``p1`` vs ``p2`` (two-sided), Cohen's h arcsine effect size;
    equals statsmodels ``NormalIndPower().solve_power(proportion_effectsize(p2, p1))``."""
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
    """Units per arm to detect a mean difference ``delta`` with common SD ``sd`` (normal)."""
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


def quantile_interval_ranks(n: int, q: float, alpha: float = 0.05) -> tuple[int, int] | None:
    """0-based order-statistic ranks bracketing the ``q`` quantile with ≥ 1-α coverage
    (distribution-free, binomial)."""
    if n < 1:
        return None
    lo = int(st.binom.ppf(alpha / 2, n, q)) - 1
    hi = int(st.binom.ppf(1 - alpha / 2, n, q))
    return max(lo, 0), min(hi, n - 1)


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
