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

from router.analysis import stats
from router.analysis.accumulate import js_distance

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
    got = stats.two_proportion_ztest(x1, n1, x2, n2)
    assert got.statistic == pytest.approx(z, rel=1e-6)
    assert got.pvalue == pytest.approx(p, rel=1e-6)


@pytest.mark.parametrize(
    "obs,shares",
    [([5000, 5100], [0.5, 0.5]), ([9000, 1200], [0.9, 0.1]), ([480, 520], [0.5, 0.5])],
)
def test_srm_equals_scipy_chisquare(obs: list[int], shares: list[float]) -> None:
    ref = st.chisquare(obs, [sum(obs) * s for s in shares])
    got = stats.srm_test(obs, shares)
    assert got.statistic == pytest.approx(ref.statistic, rel=1e-12)
    assert got.pvalue == pytest.approx(ref.pvalue, rel=1e-12, abs=1e-300)


def test_srm_needs_both_significance_and_share_deviation() -> None:
    # a tiny deviation on a huge sample is significant but below the 0.1% share threshold
    res = stats.srm_test([50_040_000, 49_960_000], [0.5, 0.5], alpha=0.001, min_share_diff=0.001)
    assert res.pvalue is not None and res.pvalue < 0.001
    assert not res.mismatch
    # sufficiency is judged on the total: 25 units are enough to test, not enough to alarm
    small = stats.srm_test([5, 20], [0.5, 0.5])
    assert small.state == "ok" and not small.mismatch
    assert small.sequential_pvalue is not None and small.sequential_pvalue > 0.001
    assert stats.srm_test([0, 0], [0.5, 0.5]).state == "not_enough_data"
    assert stats.srm_test([100, 0], [1.0, 0.0]).state == "not_applicable"


@pytest.mark.parametrize("b,c", [(3, 12), (30, 55), (0, 0), (10, 10), (200, 150)])
def test_mcnemar_equals_statsmodels(b: int, c: int) -> None:
    exact = b + c < 25
    ref = sm_mcnemar([[50, b], [c, 40]], exact=exact, correction=True)
    got = stats.mcnemar(b, c)
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
    assert stats.jensen_shannon(pz, qz) == pytest.approx(jensenshannon(pz, qz), rel=1e-12)
    # the report's KS is scipy's ks_2samp on the (complete) hash sample: checked end to end
    from router.analysis import build_report
    from router.analysis.synth import SynthSpec, dataset

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
    assert stats.psi([0.25] * 4, [0.1, 0.2, 0.3, 0.4]) == pytest.approx(0.228217, abs=1e-6)
    assert stats.psi([1, 1], [1, 1]) == 0.0
    # an empty bin is filled with 1e-4, not infinite
    assert math.isfinite(stats.psi([10, 0], [5, 5]) or math.inf)
    assert stats.psi_band(0.05) == "stable" and stats.psi_band(0.2) == "moderate"
    assert stats.psi_band(0.3) == "major"


def test_sample_size_equals_statsmodels() -> None:
    ref = NormalIndPower().solve_power(proportion_effectsize(0.11, 0.10), alpha=0.05, power=0.8)
    got = stats.n_per_arm_proportions(0.10, 0.11, 0.05, 0.8)
    assert got == pytest.approx(ref, rel=0.01)
    assert got == pytest.approx(14_744, rel=0.001)


def test_mde_inverts_the_sample_size() -> None:
    sd, n = 2.0, 5000
    m = stats.mde(2 * sd**2 / n)
    assert m is not None
    assert stats.n_per_arm_means(sd, m) == pytest.approx(n, rel=1e-9)


def test_holm_equals_statsmodels() -> None:
    p = [0.01, 0.04, 0.03, 0.2, 0.001]
    ref = multipletests(p, method="holm")[1]
    assert stats.holm(p) == pytest.approx(list(ref), rel=1e-12)
    assert stats.holm([0.02, None, 0.04]) == pytest.approx([0.04, None, 0.04])


def test_cohen_kappa_and_auc() -> None:
    from statsmodels.stats.inter_rater import cohens_kappa

    m = np.array([[40, 5, 2], [4, 30, 6], [1, 3, 20]])
    assert stats.cohen_kappa(m) == pytest.approx(cohens_kappa(m).kappa, rel=1e-12)
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 500)
    s = y * 0.5 + rng.random(500)
    u = st.mannwhitneyu(s[y == 1], s[y == 0]).statistic
    assert stats.auc(y, s) == pytest.approx(u / ((y == 1).sum() * (y == 0).sum()), rel=1e-12)


def test_paired_bootstrap_is_seeded_and_covers() -> None:
    rng = np.random.default_rng(11)
    y = rng.integers(0, 2, 2000)
    s1 = y * 0.4 + rng.random(2000)
    s2 = y * 0.6 + rng.random(2000)
    d1, ci1 = stats.paired_bootstrap_auc_diff(y, s1, s2, resamples=300, seed=3)
    d2, ci2 = stats.paired_bootstrap_auc_diff(y, s1, s2, resamples=300, seed=3)
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
    assert stats.two_proportion_ztest(0, 100, 0, 100).state == "zero_variance"
    assert stats.two_proportion_ztest(100, 100, 100, 100).pvalue == 1.0
    assert stats.paired_mean(1, 1.0, 1.0).state == "not_enough_data"
    assert stats.msprt(0.0, 0.0, 0.1).state == "zero_variance"
    assert stats.mde(0.0) is None
    assert stats.disparity_ratio([0.0, 0.0]) is None
    assert stats.cohen_kappa(np.zeros((2, 2))) is None
