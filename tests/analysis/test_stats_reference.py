"""Statistics against scipy / statsmodels references, to tight tolerances."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as st
from scipy.spatial.distance import jensenshannon
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import proportion_effectsize, proportions_ztest

from router.analysis import measures, proportions, sample_size, stats
from router.analysis.pairs import js_distance

CASES = [
    # m1, v1, n1, m2, v2, n2
    (10.0, 4.0, 50, 11.0, 9.0, 70),
    (0.1, 0.09, 10_000, 0.11, 0.0979, 9_500),
    (-3.0, 100.0, 3, 2.0, 1.0, 40),
    (5.0, 0.01, 1_000_000, 5.0001, 0.02, 999_999),
]


@pytest.mark.parametrize("m1,v1,n1,m2,v2,n2", CASES)
def test_welch_equals_scipy(m1: float, v1: float, n1: int, m2: float, v2: float, n2: int) -> None:
    ref = st.ttest_ind_from_stats(m2, math.sqrt(v2), n2, m1, math.sqrt(v1), n1, equal_var=False)
    got = stats.welch(m1, v1, n1, m2, v2, n2)
    assert got.statistic == pytest.approx(ref.statistic, rel=1e-9, abs=1e-12)
    assert got.pvalue == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-15)
    # the CI: estimate ± t_{df} * se, Welch-Satterthwaite df (scipy's own CI on raw samples)
    se = math.sqrt(v1 / n1 + v2 / n2)
    df = (v1 / n1 + v2 / n2) ** 2 / ((v1 / n1) ** 2 / (n1 - 1) + (v2 / n2) ** 2 / (n2 - 1))
    q = st.t.ppf(0.975, df)
    assert got.ci.low == pytest.approx(m2 - m1 - q * se, rel=1e-9)
    assert got.ci.high == pytest.approx(m2 - m1 + q * se, rel=1e-9)


def test_welch_ci_equals_scipy_on_samples() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.normal(0, 1, 200), rng.normal(0.3, 2, 150)
    ref = st.ttest_ind(b, a, equal_var=False).confidence_interval(0.95)
    got = stats.welch(a.mean(), a.var(ddof=1), a.size, b.mean(), b.var(ddof=1), b.size)
    assert got.ci.low == pytest.approx(ref.low, rel=1e-9)
    assert got.ci.high == pytest.approx(ref.high, rel=1e-9)


def test_delta_method_relative_uplift() -> None:
    # closed form against a direct computation of the delta-method variance
    m1, v1, n1, m2, v2, n2 = 10.0, 4.0, 400, 11.0, 9.0, 300
    got = stats.relative_uplift(m1, v1, n1, m2, v2, n2)
    var = v2 / (n2 * m1**2) + m2**2 * v1 / (n1 * m1**4)
    assert got.estimate == pytest.approx(0.1, rel=1e-12)
    assert got.ci.high - got.estimate == pytest.approx(st.norm.ppf(0.975) * math.sqrt(var), 1e-9)
    # and the simulation: the delta-method SE matches the spread of simulated ratios
    rng = np.random.default_rng(0)
    r = rng.normal(m2, math.sqrt(v2 / n2), 200_000) / rng.normal(m1, math.sqrt(v1 / n1), 200_000)
    assert r.std() == pytest.approx(math.sqrt(var), rel=0.02)


@pytest.mark.parametrize("x1,n1,x2,n2", [(100, 1000, 130, 1000), (5, 40, 9, 35), (0, 10, 1, 10)])
def test_two_proportion_ztest_equals_statsmodels(x1: int, n1: int, x2: int, n2: int) -> None:
    z, p = proportions_ztest([x2, x1], [n2, n1])
    got = proportions.two_proportion_ztest(x1, n1, x2, n2)
    assert got.statistic == pytest.approx(z, rel=1e-6)
    assert got.pvalue == pytest.approx(p, rel=1e-6)


@pytest.mark.parametrize(
    "obs,shares",
    [([5000, 5100], [0.5, 0.5]), ([9000, 1200], [0.9, 0.1]), ([480, 520], [0.5, 0.5])],
)
def test_srm_equals_scipy_chisquare(obs: list[int], shares: list[float]) -> None:
    ref = st.chisquare(obs, [sum(obs) * s for s in shares])
    got = proportions.srm_test(obs, shares)
    assert got.statistic == pytest.approx(ref.statistic, rel=1e-12)
    assert got.pvalue == pytest.approx(ref.pvalue, rel=1e-12, abs=1e-300)


def test_srm_needs_both_significance_and_share_deviation() -> None:
    # a tiny deviation on a huge sample is significant but below the 0.1% share threshold
    res = proportions.srm_test(
        [50_040_000, 49_960_000], [0.5, 0.5], alpha=0.001, min_share_diff=0.001
    )
    assert res.pvalue is not None and res.pvalue < 0.001
    assert not res.mismatch
    # sufficiency is judged on the total: 25 units are enough to test, not enough to alarm
    small = proportions.srm_test([5, 20], [0.5, 0.5])
    assert small.state == "ok" and not small.mismatch
    assert small.sequential_pvalue is not None and small.sequential_pvalue > 0.001
    assert proportions.srm_test([0, 0], [0.5, 0.5]).state == "not_enough_data"
    assert proportions.srm_test([100, 0], [1.0, 0.0]).state == "not_applicable"


@pytest.mark.parametrize("b,c", [(3, 12), (30, 55), (0, 0), (10, 10), (200, 150)])
def test_mcnemar_equals_statsmodels(b: int, c: int) -> None:
    exact = b + c < 25
    ref = sm_mcnemar([[50, b], [c, 40]], exact=exact, correction=True)
    got = proportions.mcnemar(b, c)
    assert got.pvalue == pytest.approx(ref.pvalue, rel=1e-9)
    if b + c:
        assert got.statistic == pytest.approx(ref.statistic, rel=1e-9)


def test_paired_mean_equals_ttest_rel() -> None:
    rng = np.random.default_rng(5)
    a = rng.normal(0, 1, 300)
    b = a + rng.normal(0.1, 0.5, 300)
    d = b - a
    ref = st.ttest_rel(b, a)
    got = stats.paired_mean(d.size, d.sum(), (d * d).sum())
    assert got.statistic == pytest.approx(ref.statistic, rel=1e-9)
    assert got.pvalue == pytest.approx(ref.pvalue, rel=1e-9)


def test_ks_and_js_equal_scipy() -> None:
    rng = np.random.default_rng(7)
    p = list(rng.random(6))
    q = list(rng.random(6))
    assert js_distance(p, q) == pytest.approx(jensenshannon(p, q), rel=1e-12)
    pz, qz = np.array([*p, 0.0]), np.array([*q, 0.3])  # an empty bin on one side
    assert measures.jensen_shannon(pz, qz) == pytest.approx(jensenshannon(pz, qz), rel=1e-12)
    # the report's KS is scipy's ks_2samp on the (complete) hash sample: checked end to end
    from router.analysis import build_report
    from router.demo.synth import SynthSpec, dataset

    recs, outs = dataset(SynthSpec(n=3000, challenger_shift=0.3, seed=2))
    rep = build_report(recs, outs, experiment="synth")
    xs = [r["champion"]["prediction"] for r in recs]
    ys = [r["challenger"]["prediction"] for r in recs]
    ref = st.ks_2samp(xs, ys)
    assert rep["divergence"]["ks"]["statistic"] == pytest.approx(ref.statistic, rel=1e-12)
    assert rep["divergence"]["ks"]["p_value"] == pytest.approx(ref.pvalue, rel=1e-9)
    assert rep["divergence"]["spearman"] == pytest.approx(st.spearmanr(xs, ys).statistic, 1e-9)
    assert rep["divergence"]["pearson"] == pytest.approx(st.pearsonr(xs, ys).statistic, 1e-9)
    wd = st.wasserstein_distance(xs, ys) / np.std(xs)
    assert rep["divergence"]["wasserstein_normalised"] == pytest.approx(wd, rel=1e-9)


def test_psi_reference_value() -> None:
    assert measures.psi([0.25] * 4, [0.1, 0.2, 0.3, 0.4]) == pytest.approx(0.228217, abs=1e-6)
    assert measures.psi([1, 1], [1, 1]) == 0.0
    # an empty bin is filled with 1e-4, not infinite
    assert math.isfinite(measures.psi([10, 0], [5, 5]) or math.inf)
    assert measures.psi_band(0.05) == "stable" and measures.psi_band(0.2) == "moderate"
    assert measures.psi_band(0.3) == "major"


def test_sample_size_equals_statsmodels() -> None:
    ref = NormalIndPower().solve_power(proportion_effectsize(0.11, 0.10), alpha=0.05, power=0.8)
    got = sample_size.n_per_arm_proportions(0.10, 0.11, 0.05, 0.8)
    assert got == pytest.approx(ref, rel=0.01)
    assert got == pytest.approx(14_744, rel=0.001)


def test_mde_inverts_the_sample_size() -> None:
    sd, n = 2.0, 5000
    m = sample_size.mde(2 * sd**2 / n)
    assert m is not None
    assert sample_size.n_per_arm_means(sd, m) == pytest.approx(n, rel=1e-9)


def test_holm_equals_statsmodels() -> None:
    p = [0.01, 0.04, 0.03, 0.2, 0.001]
    ref = multipletests(p, method="holm")[1]
    assert stats.holm(p) == pytest.approx(list(ref), rel=1e-12)
    assert stats.holm([0.02, None, 0.04]) == pytest.approx([0.04, None, 0.04])


def test_cohen_kappa_and_auc() -> None:
    from statsmodels.stats.inter_rater import cohens_kappa

    m = np.array([[40, 5, 2], [4, 30, 6], [1, 3, 20]])
    assert measures.cohen_kappa(m) == pytest.approx(cohens_kappa(m).kappa, rel=1e-12)
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 500)
    s = y * 0.5 + rng.random(500)
    u = st.mannwhitneyu(s[y == 1], s[y == 0]).statistic
    assert measures.auc(y, s) == pytest.approx(u / ((y == 1).sum() * (y == 0).sum()), rel=1e-12)


def test_paired_bootstrap_is_seeded_and_covers() -> None:
    rng = np.random.default_rng(11)
    y = rng.integers(0, 2, 2000)
    s1 = y * 0.4 + rng.random(2000)
    s2 = y * 0.6 + rng.random(2000)
    d1, ci1 = measures.paired_bootstrap_auc_diff(y, s1, s2, resamples=300, seed=3)
    d2, ci2 = measures.paired_bootstrap_auc_diff(y, s1, s2, resamples=300, seed=3)
    assert (d1, ci1) == (d2, ci2)
    assert d1 is not None and ci1.low is not None and ci1.high is not None
    assert ci1.low < d1 < ci1.high
    assert ci1.low > 0  # the better scorer is detected


def test_msprt_matches_its_closed_form_and_is_conservative() -> None:
    res = stats.msprt(0.02, 1e-4, 0.05)
    v, t2 = 1e-4, 0.05**2
    lam = math.sqrt(v / (v + t2)) * math.exp(t2 * 0.02**2 / (2 * v * (v + t2)))
    assert res.pvalue == pytest.approx(min(1.0, 1 / lam), rel=1e-12)
    fixed = stats.welch(0.0, 1.0, 10_000, 0.02, 1.0, 10_000)
    assert res.ci.low is not None and fixed.ci.low is not None
    assert res.ci.high - res.ci.low > fixed.ci.high - fixed.ci.low  # wider than fixed-horizon


def test_edge_cases_are_explicit_states_never_nan() -> None:
    assert stats.welch(1, 0, 1, 1, 0, 1).state == "not_enough_data"
    z = stats.welch(0.0, 0.0, 100, 0.0, 0.0, 100)
    assert z.state == "zero_variance" and z.pvalue == 1.0
    assert stats.relative_uplift(0.0, 0.0, 100, 0.1, 0.09, 100).state == "control_mean_zero"
    assert proportions.two_proportion_ztest(0, 100, 0, 100).state == "zero_variance"
    assert proportions.two_proportion_ztest(100, 100, 100, 100).pvalue == 1.0
    assert stats.paired_mean(1, 1.0, 1.0).state == "not_enough_data"
    assert stats.msprt(0.0, 0.0, 0.1).state == "zero_variance"
    assert sample_size.mde(0.0) is None
    assert measures.disparity_ratio([0.0, 0.0]) is None
    assert measures.cohen_kappa(np.zeros((2, 2))) is None


# ------------------------------------------------------------------ issue 11 references
def _mee_z_numeric(x1: int, n1: int, x2: int, n2: int, delta: float) -> float:
    """The score statistic of p2 − p1 = delta with the restricted MLE found numerically."""
    from scipy.optimize import minimize_scalar

    def nll(p1: float) -> float:
        p2 = p1 + delta
        return -(st.binom.logpmf(x1, n1, p1) + st.binom.logpmf(x2, n2, p2))

    lo, hi = max(0.0, -delta), min(1.0, 1.0 - delta)
    p1 = minimize_scalar(nll, bounds=(lo, hi), method="bounded", options={"xatol": 1e-13}).x
    p2 = p1 + delta
    return (x2 / n2 - x1 / n1 - delta) / math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)


SCORE_CASES = [
    (100, 1000, 130, 1000),
    (5, 40, 9, 35),
    (2, 10, 7, 10),
    (0, 10, 1, 10),
    (0, 1, 1, 1),
    (3, 3, 0, 7),
    (0, 500, 0, 400),
]


@pytest.mark.parametrize("x1,n1,x2,n2", SCORE_CASES)
def test_score_interval_inverts_its_score_test(x1: int, n1: int, x2: int, n2: int) -> None:
    """The bounds sit where the score statistic, with the restricted MLE found numerically,
    equals the normal quantile; the p-value is the same test's at 0 (the pooled z-test, equal
    to statsmodels' proportions_ztest), so p < 0.05 exactly when the interval excludes 0.

    (statsmodels 0.15's ``score_test_proportions_2indep(compare="diff", value≠0)`` is not a
    reference: its restricted estimate is not the likelihood's maximum, e.g. 0.197 instead of
    0.213 for 0/10 vs 1/10 at a difference of −0.168, so its score interval differs.)"""
    got = proportions.proportion_diff(x1, n1, x2, n2)
    zc = st.norm.ppf(0.975)
    assert got.ci.low is not None and got.ci.high is not None and got.estimate is not None
    assert got.ci.low <= got.estimate <= got.ci.high
    for b, sign in ((got.ci.low, 1), (got.ci.high, -1)):
        if abs(abs(b) - 1) > 1e-9:
            assert _mee_z_numeric(x1, n1, x2, n2, b) == pytest.approx(sign * zc, abs=1e-5)
    z = proportions.two_proportion_ztest(x1, n1, x2, n2)
    assert got.pvalue == z.pvalue and got.pvalue is not None
    if 0 < got.pvalue < 1:
        assert (got.pvalue < 0.05) == (got.ci.low > 0 or got.ci.high < 0)


def _tango_z_numeric(b: int, c: int, n: int, delta: float) -> float:
    """Tango's score statistic with the restricted MLE found numerically (scipy), not by the
    closed form: an independent reference."""
    from scipy.optimize import minimize_scalar

    def nll(x: float) -> float:  # x = P(only the champion), x + delta = P(only the challenger)
        pc, rest = x + delta, 1 - 2 * x - delta
        terms = [(b, x), (c, pc), (n - b - c, rest)]
        return -sum(k * math.log(max(p, 1e-300)) for k, p in terms if k)

    lo, hi = max(0.0, -delta), (1 - delta) / 2
    x = minimize_scalar(nll, bounds=(lo, hi), method="bounded", options={"xatol": 1e-13}).x
    return (c - b - n * delta) / math.sqrt(n * (2 * x + delta - delta**2))


@pytest.mark.parametrize("b,c,n", [(40, 20, 160), (3, 12, 100), (0, 2, 2), (5, 0, 50),
                                   (150, 100, 2000), (0, 0, 30)])  # fmt: skip
def test_tango_paired_interval_inverts_its_score_test(b: int, c: int, n: int) -> None:
    from statsmodels.stats.contingency_tables import mcnemar as sm

    got = proportions.paired_proportion_diff(b, c, n)
    zc = st.norm.ppf(0.975)
    assert got.ci.low is not None and got.ci.high is not None
    for bound_, sign in ((got.ci.low, 1), (got.ci.high, -1)):
        if abs(abs(bound_) - 1) > 1e-9:  # an interior bound: the test statistic is exactly zc
            assert _tango_z_numeric(b, c, n, bound_) == pytest.approx(sign * zc, abs=1e-5)
    if b + c:  # at 0 the score test is McNemar's chi-square without continuity correction
        ref = sm([[n - b - c, b], [c, 0]], exact=False, correction=False)
        assert got.pvalue == pytest.approx(ref.pvalue, rel=1e-9)
    else:
        assert got.pvalue == 1.0


def test_welch_and_degenerate_cases_equal_gbstats() -> None:
    from gbstats.frequentist.tests import FrequentistConfig, TwoSidedTTest
    from gbstats.models.statistics import SampleMeanStatistic

    def stat(n: int, mean: float, var: float) -> SampleMeanStatistic:
        return SampleMeanStatistic(n=n, sum=mean * n, sum_squares=var * (n - 1) + mean**2 * n)

    cfg = FrequentistConfig(difference_type="absolute")
    for m1, v1, n1, m2, v2, n2 in CASES[:3]:
        ref = TwoSidedTTest(stat(n1, m1, v1), stat(n2, m2, v2), cfg).compute_result()
        got = stats.welch(m1, v1, n1, m2, v2, n2)
        assert got.pvalue == pytest.approx(ref.p_value, rel=1e-6)
        assert [got.ci.low, got.ci.high] == pytest.approx(ref.ci, rel=1e-7)
    # no variance in either arm, different means: gbstats gives p = 1 with an error, so do we
    # (and no interval rather than a zero-width one)
    ref = TwoSidedTTest(stat(50, 1.0, 0.0), stat(50, 2.0, 0.0), cfg).compute_result()
    got = stats.welch(1.0, 0.0, 50, 2.0, 0.0, 50)
    assert ref.p_value == 1 and ref.error_message
    assert got.pvalue == 1.0 and got.state == "zero_variance" and got.ci.low is None


def test_srm_equals_gbstats_and_the_exact_binomial() -> None:
    from gbstats.utils import check_srm

    for obs, w in (([5000, 5100], [0.5, 0.5]), ([9000, 1200], [0.9, 0.1]), ([3000, 0], [0.5, 0.5])):
        got = proportions.srm_test(obs, w)
        assert got.pvalue == pytest.approx(check_srm(obs, w), rel=1e-9, abs=1e-300)
    small = proportions.srm_test([58, 2], [0.95, 0.05])  # an expected count below 5
    assert small.pvalue == pytest.approx(st.binomtest(2, 60, 0.05).pvalue, rel=1e-12)
    assert "exact binomial" in small.method


def test_ratio_variance_equals_gbstats_ratio_statistic() -> None:
    from gbstats.models.statistics import RatioStatistic, SampleMeanStatistic

    rng = np.random.default_rng(17)
    d = rng.integers(1, 20, 500).astype(float)
    x = rng.binomial(d.astype(int), rng.beta(1, 4, 500)).astype(float)
    ref = RatioStatistic(
        n=500,
        m_statistic=SampleMeanStatistic(n=500, sum=x.sum(), sum_squares=(x * x).sum()),
        d_statistic=SampleMeanStatistic(n=500, sum=d.sum(), sum_squares=(d * d).sum()),
        m_d_sum_of_products=(x * d).sum(),
    )
    dx, dd = x - x.mean(), d - d.mean()
    r, v = stats.ratio_variance(500, x.mean(), d.mean(), (dx * dx).sum(), (dd * dd).sum(),
                                (dx * dd).sum())  # fmt: skip
    assert float(r) == pytest.approx(ref.mean, rel=1e-12)
    assert float(v) == pytest.approx(ref.variance, rel=1e-9)


def test_log_mse_ratio_delta_method_matches_simulation() -> None:
    rng = np.random.default_rng(19)
    n, reps = 400, 4000
    z0 = rng.standard_normal((reps, n))
    z1 = 0.5 * z0 + math.sqrt(0.75) * rng.standard_normal((reps, n))
    a, b = z0**2, (1.1 * z1) ** 2
    lr = np.log(b.mean(1) / a.mean(1))
    da, db = a[0] - a[0].mean(), b[0] - b[0].mean()
    _est, var = stats.log_mse_ratio(n, a[0].mean(), b[0].mean(), (da * da).sum(),
                                    (db * db).sum(), (da * db).sum())  # fmt: skip
    assert math.sqrt(float(var)) == pytest.approx(lr.std(), rel=0.08)


def test_mixture_boundaries_equal_their_integrals() -> None:
    """The closed forms of the confidence sequences' mixtures against numerical integration of
    their definitions."""
    from scipy import integrate

    from router.analysis import sequential as sq

    a, b = 2.0, 5.0
    for k, n, p0 in ((3, 10, 0.2), (95, 100, 0.95), (0, 40, 0.05)):

        def lik(p: float, k: int = k, n: int = n) -> float:
            return float(p**k * (1 - p) ** (n - k) * st.beta.pdf(p, a, b))

        num = integrate.quad(lik, 0, 1, epsabs=0, epsrel=1e-11, limit=200)[0]
        ref = math.log(num) - k * math.log(p0) - (n - k) * math.log(1 - p0)
        assert float(sq.binomial_log_mixture(k, n, p0, a, b)) == pytest.approx(ref, abs=1e-7)
    for s, v, rho, c in ((5.0, 10.0, 10.0, 1.0), (12.0, 30.0, 3.0, 2.0), (40.0, 100.0, 100.0, 1.0)):
        a0 = rho / c**2

        def lam(u: float, s: float = s, v: float = v, c: float = c) -> float:
            return math.exp((1 - u) / c * s + (math.log(u) + (1 - u)) / c**2 * v)

        def prior(u: float, a0: float = a0) -> float:
            return u ** (a0 - 1) * math.exp(-a0 * u)

        num = integrate.quad(lambda u: lam(u) * prior(u), 0, 1, limit=200)[0]
        den = integrate.quad(prior, 0, 1, limit=200)[0]
        got = float(sq._gamma_exp_log_mixture(np.asarray(s), np.asarray(v), np.asarray(c), rho))
        assert got == pytest.approx(math.log(num / den), abs=1e-8)


def test_confidence_sequence_bounds_sit_on_their_boundary() -> None:
    from router.analysis import sequential as sq

    lo, hi = sq.proportion_cs(30, 100, 0.05)
    for p in (float(lo), float(hi)):
        m = float(sq.binomial_log_mixture(30, 100, p, 0.5, 0.5))
        assert m == pytest.approx(math.log(20), abs=1e-6)
    assert sq.proportion_cs(0, 0, 0.05) == (0.0, 1.0)
    lo, hi = sq.bounded_mean_cs(2000, -0.02, 199.2, -1.0, 1.0, 0.05)
    assert float(lo) < -0.02 < float(hi)
    above, below = sq.bounded_mean_reject(2000, -0.02, 199.2, float(lo) - 1e-6, -1, 1, 0.05)
    assert bool(above) and not bool(below)


def test_welford_moments_are_exact_and_merge() -> None:
    from router.analysis.sketches import CoMoments, Moments

    rng = np.random.default_rng(23)
    x = 1e8 + rng.normal(0, 1, 10_000)
    y = x + 0.5 + rng.normal(0, 0.01, 10_000)
    whole = Moments()
    whole.add_array(y - x)
    parts = Moments()
    for chunk in np.array_split(y - x, 7):
        m = Moments()
        m.add_array(chunk)
        parts.merge(m)
    for m in (whole, parts):
        assert m.var == pytest.approx(np.var(y - x, ddof=1), rel=1e-9)
        assert m.mean == pytest.approx(np.mean(y - x), rel=1e-12)
    co, co2 = CoMoments(), CoMoments()
    co.add_arrays(x, y)
    for cx, cy in zip(np.array_split(x, 5), np.array_split(y, 5), strict=True):
        part = CoMoments()
        part.add_arrays(cx, cy)
        co2.merge(part)
    r = st.pearsonr(x, y).statistic
    for c in (co, co2):
        assert c.cxy / math.sqrt(c.cxx * c.cyy) == pytest.approx(r, rel=1e-9)
    raw = ((y * y).sum() - 2 * (x * y).sum() + (x * x).sum()) / x.size  # the old raw sums
    assert abs(raw - np.mean((y - x) ** 2)) > 0.01  # cancelled away: why moments are centred
