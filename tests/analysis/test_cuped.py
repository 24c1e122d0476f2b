"""CUPED (regression adjustment): a hand-computed case, statsmodels OLS and gbstats references,
ratio metrics by linearisation, the report section, and simulations (CI-sized by default;
``ROUTER_FULL_SIM=1`` runs 5x the experiments)."""

from __future__ import annotations

import math
import os
import time
from typing import Any

import numpy as np
import pytest
from scipy import stats as st

from router.analysis import build_report, cuped, parse_policy, stats
from router.analysis.sketches import CoMoments
from router.config import ConfigError
from tests.analysis.test_report import strict_json

FULL = "1" in (os.environ.get("ROUTER_FULL_SIM"), os.environ.get("ROUTER_SIM_FULL"))


def _co(x: np.ndarray, y: np.ndarray) -> CoMoments:
    c = CoMoments()
    c.add_arrays(np.asarray(x, float), np.asarray(y, float))
    return c


def test_hand_computed_case() -> None:
    # champion: x = 1, 2, 3 and y = 2, 4, 3; challenger: x = 2, 4 and y = 5, 7
    # within-arm: champion x̄ = 2, ȳ = 3, Σdx·dy = (-1)(-1) + 0 + (1)(0) = 1, Σdx² = 2
    #             challenger x̄ = 3, ȳ = 6, Σdx·dy = (-1)(-1) + (1)(1) = 2, Σdx² = 2
    # theta = (1 + 2) / (2 + 2) = 0.75; pooled x̄ = 12 / 5 = 2.4
    # adjusted means: 3 - 0.75 (2 - 2.4) = 3.3 and 6 - 0.75 (3 - 2.4) = 5.55; difference 2.25
    # adjusted variances: champion (Σdy² = 2) (2 - 2·0.75·1 + 0.5625·2) / 2 = 0.8125,
    #                     challenger (Σdy² = 2) (2 - 2·0.75·2 + 0.5625·2) / 1 = 0.125
    a = _co(np.array([1, 2, 3]), np.array([2, 4, 3]))
    b = _co(np.array([2, 4]), np.array([5, 7]))
    r = cuped.adjust((a, b))
    assert r.theta == pytest.approx(0.75, abs=1e-12)
    assert r.means == pytest.approx((3.3, 5.55), abs=1e-12)
    assert r.variances == pytest.approx((0.8125, 0.125), abs=1e-12)
    assert r.diff is not None and r.diff.estimate == pytest.approx(2.25, abs=1e-12)
    ref = st.ttest_ind_from_stats(5.55, math.sqrt(0.125), 2, 3.3, math.sqrt(0.8125), 3, False)
    assert r.diff.pvalue == pytest.approx(ref.pvalue, rel=1e-10)
    # unadjusted Var(diff) = 1/3 + 2/2 = 4/3; adjusted 0.8125/3 + 0.125/2 = 0.3333...
    assert r.variance_reduction == pytest.approx(1 - (0.8125 / 3 + 0.0625) / (4 / 3), abs=1e-12)


@pytest.mark.parametrize("n0,n1,noise1", [(3000, 3000, 1.0), (2000, 5000, 2.0)])
def test_equals_statsmodels_ols(n0: int, n1: int, noise1: float) -> None:
    import statsmodels.api as sm

    rng = np.random.default_rng(n1)
    x0, x1 = rng.normal(5, 2, n0), rng.normal(5, 2, n1)
    y0 = 1 + 0.8 * x0 + rng.normal(0, 1, n0)
    y1 = 1.3 + 0.8 * x1 + rng.normal(0, noise1, n1)
    r = cuped.adjust((_co(x0, y0), _co(x1, y1)))
    design = np.column_stack([np.ones(n0 + n1), np.r_[np.zeros(n0), np.ones(n1)], np.r_[x0, x1]])
    fit = sm.OLS(np.r_[y0, y1], design).fit(cov_type="HC2")
    assert r.diff is not None and r.variances is not None
    # the adjusted difference is the OLS variant coefficient; theta the covariate's
    assert r.diff.estimate == pytest.approx(fit.params[1], abs=1e-10)
    assert r.theta == pytest.approx(fit.params[2], abs=1e-10)
    # Welch's SE on the adjusted values is the heteroskedasticity-robust OLS SE up to O(1/n)
    se = math.sqrt(r.variances[0] / n0 + r.variances[1] / n1)
    assert se == pytest.approx(fit.bse[1], rel=1e-3)


@pytest.mark.parametrize("share", [0.3, 0.7])
def test_missing_history_indicator_equals_statsmodels_ols(share: float) -> None:
    """Units without history get 0 and a has-history indicator as a second covariate: the
    adjusted difference is the variant coefficient of ``y ~ 1 + variant + c + has`` exactly,
    theta and the indicator's slope are the fit's, and the variance falls by about the share
    with history times rho² (a plain 0 would cost most of that when the history's level is far
    from 0)."""
    import statsmodels.api as sm

    rng = np.random.default_rng(int(share * 10))
    n0, n1 = 3000, 4000
    v = np.r_[np.zeros(n0, int), np.ones(n1, int)]
    pre = rng.normal(10, 1, n0 + n1)
    y = 2 + 0.8 * (pre - 10) + 0.6 * rng.normal(0, 1, n0 + n1) + 0.1 * v
    has = rng.random(n0 + n1) < share
    c = np.where(has, pre, 0.0)

    def comoments(z: np.ndarray) -> tuple[CoMoments, CoMoments]:
        return _co(z[v == 0], y[v == 0]), _co(z[v == 1], y[v == 1])

    r = cuped.adjust_with_indicator(comoments, c, has)
    design = np.column_stack([np.ones(n0 + n1), v, c, has.astype(float)])
    fit = sm.OLS(y, design).fit(cov_type="HC2")
    assert r.state == "ok" and r.diff is not None and r.variances is not None
    assert r.diff.estimate == pytest.approx(fit.params[1], abs=1e-10)
    assert r.theta == pytest.approx(fit.params[2], abs=1e-10)
    assert r.theta_indicator == pytest.approx(fit.params[3], abs=1e-9)
    se = math.sqrt(r.variances[0] / n0 + r.variances[1] / n1)
    assert se == pytest.approx(fit.bse[1], rel=2e-3)
    expected = share * 0.64 / (0.64 + 0.36)  # share x rho² (here rho² = 0.64)
    assert r.variance_reduction == pytest.approx(expected, abs=0.05)
    plain = cuped.adjust(comoments(c))  # the old rule: the zeros swamp the slope
    assert plain.variance_reduction is not None and plain.variance_reduction < expected - 0.1


def test_indicator_is_dropped_when_every_unit_or_none_has_history() -> None:
    rng = np.random.default_rng(4)
    x0, x1 = rng.normal(5, 2, 500), rng.normal(5, 2, 600)
    y0, y1 = 1 + 0.8 * x0 + rng.normal(0, 1, 500), 1.3 + 0.8 * x1 + rng.normal(0, 1, 600)
    c, y = np.r_[x0, x1], np.r_[y0, y1]
    v = np.r_[np.zeros(500, int), np.ones(600, int)]

    def comoments(z: np.ndarray) -> tuple[CoMoments, CoMoments]:
        return _co(z[v == 0], y[v == 0]), _co(z[v == 1], y[v == 1])

    both = cuped.adjust_with_indicator(comoments, c, np.ones(c.size, bool))
    one = cuped.adjust((_co(x0, y0), _co(x1, y1)))
    assert both.theta_indicator is None
    assert both.diff is not None and one.diff is not None
    assert both.diff.estimate == pytest.approx(one.diff.estimate, abs=1e-12)
    none = cuped.adjust_with_indicator(comoments, np.zeros(c.size), np.zeros(c.size, bool))
    assert none.state == cuped.COVARIATE_CONSTANT


def test_equals_gbstats_regression_adjusted_ttest() -> None:
    from gbstats.frequentist.tests import FrequentistConfig, TwoSidedTTest
    from gbstats.models.statistics import RegressionAdjustedStatistic, SampleMeanStatistic

    rng = np.random.default_rng(11)
    x0, x1 = rng.gamma(2, 3, 4000), rng.gamma(2, 3, 3500)
    y0 = 2 + 0.6 * x0 + rng.normal(0, 2, x0.size)
    y1 = 2.3 + 0.6 * x1 + rng.normal(0, 2, x1.size)

    def ra(x: np.ndarray, y: np.ndarray) -> RegressionAdjustedStatistic:
        return RegressionAdjustedStatistic(
            n=x.size,
            post_statistic=SampleMeanStatistic(n=y.size, sum=y.sum(), sum_squares=(y**2).sum()),
            pre_statistic=SampleMeanStatistic(n=x.size, sum=x.sum(), sum_squares=(x**2).sum()),
            post_pre_sum_of_products=(x * y).sum(),
            theta=0,
        )

    arms = (_co(x0, y0), _co(x1, y1))
    for relative in (False, True):
        cfg = FrequentistConfig(difference_type="relative" if relative else "absolute")
        t = TwoSidedTTest(ra(x0, y0), ra(x1, y1), cfg)
        res = t.compute_result()
        theta = t.stat_a.theta  # gbstats' theta: pooled over both arms, not within arms
        mine = cuped.adjust(arms, theta=theta)
        got = mine.relative if relative else mine.diff
        assert got is not None and got.estimate is not None
        assert got.estimate == pytest.approx(res.expected, rel=1e-9)
        # absolute: Welch's t on both sides; relative: gbstats takes t with Welch's df where
        # our delta-method intervals take the normal quantile (1e-4 apart at this df)
        tol = 2e-4 if relative else 1e-9
        assert got.ci.low == pytest.approx(res.ci[0], rel=tol)
        assert got.ci.high == pytest.approx(res.ci[1], rel=tol)
        if not relative:
            assert mine.diff is not None and mine.diff.pvalue == pytest.approx(res.p_value, 1e-6)
        # the default (within-arm) theta differs from gbstats' by O(1/n) only
        assert cuped.adjust(arms).theta == pytest.approx(theta, rel=1e-2)


def test_degenerate_states() -> None:
    one = _co(np.array([1.0]), np.array([2.0]))
    two = _co(np.array([1.0, 2.0]), np.array([2.0, 3.0]))
    assert cuped.adjust((one, two)).state == stats.NOT_ENOUGH_DATA
    flat = _co(np.array([3.0, 3.0, 3.0]), np.array([1.0, 2.0, 4.0]))
    assert cuped.adjust((flat, flat)).state == cuped.COVARIATE_CONSTANT


def test_ratio_linearisation_matches_the_delta_method() -> None:
    rng = np.random.default_rng(4)
    k = 3000
    n = rng.integers(1, 6, k).astype(float)
    c = rng.normal(10, 3, k)
    x = n * (0.2 * c + rng.normal(0, 1, k))
    co = cuped.ratio_comoments(c, x, n)
    r = x.sum() / n.sum()
    lin = (x - r * n) / n.mean()
    assert co.my == pytest.approx(r, rel=1e-12)
    assert co.cyy / (k - 1) == pytest.approx(lin.var(ddof=1), rel=1e-9)
    assert co.cxy / (k - 1) == pytest.approx(np.cov(c, lin)[0, 1], rel=1e-9)
    # the per-cluster variance is the delta method's (stats.ratio_variance)
    dx, dn = x - x.mean(), n - n.mean()
    _ratio, var = stats.ratio_variance(
        k, x.mean(), n.mean(), (dx * dx).sum(), (dn * dn).sum(), (dx * dn).sum()
    )
    assert co.cyy / (k - 1) == pytest.approx(float(var), rel=1e-9)
    # clusters of one request without a unit (covariate 0) merge exactly
    solo = rng.normal(2, 1, 50)
    full = cuped.ratio_comoments(np.r_[c, np.zeros(50)], np.r_[x, solo], np.r_[n, np.ones(50)])
    part = cuped.ratio_comoments(
        c, x, n, (50.0, float(solo.mean()), float(((solo - solo.mean()) ** 2).sum()))
    )
    for name in ("n", "mx", "my", "cxx", "cyy", "cxy"):
        assert getattr(part, name) == pytest.approx(getattr(full, name), rel=1e-9, abs=1e-9)


# ---------------------------------------------------------------- simulations
def _sim(rho: float, effect: float, reps: int, n: int, seed: int) -> dict[str, np.ndarray]:
    """``reps`` experiments of ``n`` units per arm, y = rho x + sqrt(1 - rho²) e (+ effect)."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[float]] = {"p": [], "p_raw": [], "lo": [], "hi": [], "w": [], "w_raw": [],
                                   "slo": [], "shi": []}  # fmt: skip
    for _ in range(reps):
        arms, raw = [], []
        for arm in (0, 1):
            x = rng.normal(0, 1, n)
            y = rho * x + math.sqrt(1 - rho * rho) * rng.normal(0, 1, n) + effect * arm
            arms.append(_co(x, y))
            raw.append((float(y.mean()), float(y.var(ddof=1))))
        r = cuped.adjust((arms[0], arms[1]))
        assert r.diff is not None and r.variances is not None and r.means is not None
        w = stats.welch(raw[0][0], raw[0][1], n, raw[1][0], raw[1][1], n)
        vd = r.variances[0] / n + r.variances[1] / n
        seq = stats.msprt(r.means[1] - r.means[0], vd, 0.1 * math.sqrt((raw[0][1] + raw[1][1]) / 2))
        out["p"].append(r.diff.pvalue or 1.0)
        out["p_raw"].append(w.pvalue or 1.0)
        out["lo"].append(r.diff.ci.low or 0.0)
        out["hi"].append(r.diff.ci.high or 0.0)
        out["w"].append((r.diff.ci.high or 0.0) - (r.diff.ci.low or 0.0))
        out["w_raw"].append((w.ci.high or 0.0) - (w.ci.low or 0.0))
        out["slo"].append(seq.ci.low or 0.0)
        out["shi"].append(seq.ci.high or 0.0)
    return {k: np.asarray(v) for k, v in out.items()}


def test_simulation_aa_false_positives_coverage_and_narrowing() -> None:
    reps = 10_000 if FULL else 2_000
    s = _sim(rho=0.7, effect=0.0, reps=reps, n=200, seed=17)
    fpr = float((s["p"] < 0.05).mean())
    assert 0.035 <= fpr <= 0.065, fpr
    cover = float(((s["lo"] <= 0) & (s["hi"] >= 0)).mean())
    assert 0.935 <= cover <= 0.965, cover
    # rho = 0.7: the interval narrows by 1 - sqrt(1 - 0.49) = 28.6%; at least 25% required
    narrowing = 1 - float(np.median(s["w"] / s["w_raw"]))
    assert narrowing >= 0.25, narrowing
    assert narrowing == pytest.approx(1 - math.sqrt(1 - 0.49), abs=0.02)
    # the always-valid interval on the adjusted values covers too (conservatively, one look)
    assert float(((s["slo"] <= 0) & (s["shi"] >= 0)).mean()) >= 0.95


def test_simulation_aa_with_missing_history_and_the_indicator() -> None:
    """Half the units without history (covariate 0 plus the indicator): the A/A false-positive
    rate stays near alpha, the interval covers, and it narrows by about what the units with
    history allow (Var x (1 - share rho²): 1 - sqrt(1 - 0.5 x 0.49) = 13.1% at rho 0.7)."""
    reps = 5_000 if FULL else 1_000
    rng = np.random.default_rng(23)
    n = 200
    v = np.r_[np.zeros(n, int), np.ones(n, int)]
    p, cover, narrow = [], [], []
    for _ in range(reps):
        x = rng.normal(10, 1, 2 * n)
        y = 0.7 * (x - 10) + math.sqrt(1 - 0.49) * rng.normal(0, 1, 2 * n)
        has = rng.random(2 * n) < 0.5
        c = np.where(has, x, 0.0)

        def comoments(z: np.ndarray, y: np.ndarray = y) -> tuple[CoMoments, CoMoments]:
            return _co(z[v == 0], y[v == 0]), _co(z[v == 1], y[v == 1])

        r = cuped.adjust_with_indicator(comoments, c, has)
        assert r.diff is not None and r.diff.ci.low is not None and r.diff.ci.high is not None
        w = stats.welch(float(y[:n].mean()), float(y[:n].var(ddof=1)), n,
                        float(y[n:].mean()), float(y[n:].var(ddof=1)), n)  # fmt: skip
        assert w.ci.low is not None and w.ci.high is not None
        p.append(r.diff.pvalue or 1.0)
        cover.append(r.diff.ci.low <= 0 <= r.diff.ci.high)
        narrow.append(1 - (r.diff.ci.high - r.diff.ci.low) / (w.ci.high - w.ci.low))
    fpr = float((np.asarray(p) < 0.05).mean())
    assert 0.03 <= fpr <= 0.07, fpr
    assert 0.93 <= float(np.mean(cover)) <= 0.97
    assert float(np.median(narrow)) == pytest.approx(1 - math.sqrt(1 - 0.5 * 0.49), abs=0.03)


def test_simulation_coverage_under_an_effect_and_variance_reduction() -> None:
    reps = 5_000 if FULL else 1_000
    s = _sim(rho=0.5, effect=0.3, reps=reps, n=300, seed=23)
    cover = float(((s["lo"] <= 0.3) & (s["hi"] >= 0.3)).mean())
    assert 0.93 <= cover <= 0.97, cover
    # variance reduction ~ rho² = 0.25 (the interval's width ratio is sqrt(1 - rho²))
    red = 1 - float(np.median((s["w"] / s["w_raw"]) ** 2))
    assert red == pytest.approx(0.25, abs=0.03)
    # more power: the adjusted test rejects more often than the unadjusted one
    assert (s["p"] < 0.05).mean() > (s["p_raw"] < 0.05).mean()


# ---------------------------------------------------------------- the report
T0 = time.time() - 86_400


def _experiment(
    n: int, rho: float, effect: float, seed: int, with_history: float = 1.0, cov_metric: str = ""
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rng = np.random.default_rng(seed)
    recs: list[dict[str, Any]] = []
    outs: list[dict[str, Any]] = []
    side = {"version": "1", "status": 200, "latency_ms": 5.0, "prediction": 0.3, "error": None}
    for i in range(n):
        v = "challenger" if i % 2 else "champion"
        other = "champion" if v == "challenger" else "challenger"
        for j in range(2):  # two requests per unit
            recs.append({"v": 1, "experiment": "e", "request_id": f"r{i}-{j}", "ts": T0 + i + j,
                         "unit": f"u{i}", "bucket": 0, "served": v, "mirrored": False,
                         "segment": {}, v: side, other: None, "contract": None})  # fmt: skip
        x = rng.normal(0, 1)
        y = rho * x + math.sqrt(1 - rho * rho) * rng.normal(0, 1) + 10 + effect * (i % 2)
        if rng.random() < with_history:
            outs.append({"v": 1, "experiment": "e", "unit": f"u{i}", "value": float(x + 10),
                         "metric": cov_metric or "rev", "ts": T0 - 3600.0})  # fmt: skip
        outs.append({"v": 1, "experiment": "e", "unit": f"u{i}", "metric": "rev",
                     "value": float(y), "ts": T0 + n + 10.0})  # fmt: skip
        for j in range(2):  # a per-request metric: request-joined, correlated with the history
            outs.append({"v": 1, "experiment": "e", "request_id": f"r{i}-{j}", "metric": "spend",
                         "value": float(y / 2 + rng.normal(0, 0.3))})  # fmt: skip
    return recs, outs


def test_report_has_adjusted_beside_unadjusted() -> None:
    recs, outs = _experiment(3000, 0.8, 0.0, seed=1)
    pol = parse_policy({"metrics": {"spend": {"per": "request", "agg": "sum"}}})
    rep = build_report(recs, outs, experiment="e", policy=pol)
    strict_json(rep)  # NaN-free and valid against the report schema (cuped is in it)
    m = rep["metrics"]["rev"]
    cu = m["cuped"]
    assert cu["state"] == "ok" and cu["covariate"]["source"] == "history"
    assert cu["units_with_covariate"] == {"champion": 1500, "challenger": 1500}
    assert cu["correlation"] == pytest.approx(0.8, abs=0.03)
    assert cu["variance_reduction"] == pytest.approx(0.64, abs=0.05)
    adj, raw = cu["adjusted"], m["uplift"]
    for key in ("absolute", "ci", "p_value", "sequential_ci", "relative_ci", "sequential_p_value"):
        assert key in adj and key in raw
    assert adj["ci"][1] - adj["ci"][0] < 0.7 * (raw["ci"][1] - raw["ci"][0])
    assert (
        adj["sequential_ci"][1] - adj["sequential_ci"][0]
        < raw["sequential_ci"][1] - raw["sequential_ci"][0]
    )
    # the history rows are not outcomes of the experiment: the unadjusted mean is ~10, not ~5
    assert m["variants"]["champion"]["mean"] == pytest.approx(10, abs=0.1)
    # the ratio metric is adjusted on its linearisation, by the unit's history of "rev"...
    sp = rep["metrics"]["spend"]
    assert sp["per"] == "request"
    # ... which is a different metric: "spend" has no history of its own
    assert sp["cuped"]["state"] == cuped.NO_COVARIATE and sp["cuped"]["adjusted"] is None


def test_ratio_metric_with_a_named_covariate_and_units_without_history() -> None:
    recs, outs = _experiment(3000, 0.8, 0.0, seed=2, with_history=0.7, cov_metric="rev_pre")
    pol = parse_policy(
        {
            "metrics": {"spend": {"per": "request", "agg": "sum"}},
            "cuped": {"covariates": {"spend": "rev_pre", "rev": "rev_pre"}},
        }
    )
    rep = build_report(recs, outs, experiment="e", policy=pol)
    assert "rev_pre" not in rep["metrics"]  # a covariate is not analysed as an outcome
    sp = rep["metrics"]["spend"]["cuped"]
    assert sp["state"] == "ok" and sp["covariate"] == {"source": "metric", "metric": "rev_pre"}
    with_cov = sum(sp["units_with_covariate"].values())
    assert 0.65 * 3000 < with_cov < 0.75 * 3000
    # the units without history get 0 (a sum metric) and a has-history indicator: their real
    # pre-values are ~10, which a plain 0 would turn into most of the slope; with the
    # indicator the units with history keep their reduction (about 0.7 x rho² = 0.45)
    assert sp["adjusted"]["absolute"] == pytest.approx(0.0, abs=0.1)
    assert sp["theta_has_history"] is not None
    rv = rep["metrics"]["rev"]["cuped"]
    assert rv["state"] == "ok" and rv["variance_reduction"] == pytest.approx(0.45, abs=0.06)
    assert sp["variance_reduction"] > 0.2
    # with every unit's history present, the named covariate gives the full reduction
    recs, outs = _experiment(3000, 0.8, 0.0, seed=2, cov_metric="rev_pre")
    rep = build_report(recs, outs, experiment="e", policy=pol)
    assert rep["metrics"]["rev"]["cuped"]["variance_reduction"] > 0.5
    assert rep["metrics"]["spend"]["cuped"]["variance_reduction"] > 0.3


def test_history_window_and_disabled() -> None:
    recs, outs = _experiment(400, 0.8, 0.0, seed=3)
    short = parse_policy({"cuped": {"history_s": 60}})  # the history is an hour before
    rep = build_report(recs, outs, experiment="e", policy=short)
    assert rep["metrics"]["rev"]["cuped"]["state"] == cuped.NO_COVARIATE
    off = parse_policy({"cuped": {"enabled": False}})
    assert "cuped" not in build_report(recs, outs, experiment="e", policy=off)["metrics"]["rev"]


def test_primary_gate_decides_on_the_adjusted_result_when_asked() -> None:
    recs, outs = _experiment(3000, 0.9, 0.12, seed=5)
    base = {"primary_metric": {"name": "rev"}, "min_samples": 10}
    rows = {}
    for mode in ("unadjusted", "adjusted"):
        pol = parse_policy(base | {"cuped": {"decide_on": mode}})
        rep = build_report(recs, outs, experiment="e", policy=pol)
        rows[mode] = next(g for g in rep["gates"] if g["name"] == "primary_metric")
        m = rep["metrics"]["rev"]
        src = m["cuped"]["adjusted"] if mode == "adjusted" else m["uplift"]
        assert rows[mode]["ci"] == pytest.approx(src["sequential_ci"])
    assert "CUPED" in rows["adjusted"]["test"]
    assert rows["adjusted"]["ci"][0] > rows["unadjusted"]["ci"][0]


def test_policy_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"cuped\.decide_on"):
        parse_policy({"cuped": {"decide_on": "both"}})
    with pytest.raises(ConfigError, match=r"cuped\.history_s"):
        parse_policy({"cuped": {"history_s": -1}})


def test_history_is_read_from_redis_before_the_window(redis_url: str) -> None:
    """With --since, the outcomes stream is also read over cuped.history_s before it: the
    unit-joined rows there are the covariate; request-joined ones there stay out."""
    import redis

    from router.analysis.reader import Source
    from router.analysis.run import analyze
    from tests.analysis.test_report import xadd_records

    recs, outs = _experiment(1200, 0.8, 0.0, seed=7)
    since = T0 - 1.0  # the records start at T0; the history rows are an hour before
    stray = {"v": 1, "experiment": "e", "request_id": "old-request", "metric": "rev",
             "value": 1.0, "ts": T0 - 1800.0}  # fmt: skip
    client = redis.Redis.from_url(redis_url)
    xadd_records(client, "e:pairs", recs)
    rows = [o if "ts" in o else o | {"ts": T0 + 1300.0} for o in [*outs, stray]]
    xadd_records(client, "e:outcomes", sorted(rows, key=lambda o: o["ts"]))
    client.close()
    src = Source(experiment="e", redis_url=redis_url, since=since)
    rep = analyze(src, parse_policy({}), split=0.5)
    cu = rep["metrics"]["rev"]["cuped"]
    assert cu["state"] == "ok" and sum(cu["units_with_covariate"].values()) == 1200
    assert cu["variance_reduction"] > 0.5
    assert rep["counts"]["outcomes"]["outside_window"] == 1  # the request-joined stray row
    short = analyze(src, parse_policy({"cuped": {"history_s": 60}}), split=0.5)
    assert short["metrics"]["rev"]["cuped"]["state"] == cuped.NO_COVARIATE
