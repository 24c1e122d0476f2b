"""One regression test per defect of issue 11 ("decisions you can trust"), each named after its
item. Every test here failed on the analyzer before the fix."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from scipy import stats as st

from router.analysis import Policy, build_report, quantiles, stats
from router.analysis.policy import Guardrails, MetricSpec
from router.demo.synth import SynthSpec, dataset

T0 = 1_790_000_000.0


def side(pred: Any, status: int = 200, lat: float = 10.0) -> dict[str, Any]:
    ok = status < 500
    return {
        "version": "v",
        "status": status,
        "latency_ms": lat,
        "prediction": pred if ok else None,
        "error": None if ok else "upstream 503",
    }


def record(
    i: int,
    *,
    served: str = "champion",
    mirrored: bool = True,
    unit: str | None = None,
    champion: dict[str, Any] | None = None,
    challenger: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "v": 1,
        "experiment": "t",
        "request_id": f"r{i}",
        "ts": T0 + i * 0.01,
        "unit": unit or f"u{i}",
        "bucket": 0,
        "served": served,
        "mirrored": mirrored,
        "segment": {},
        "champion": champion,
        "challenger": challenger,
        "contract": None,
    }


def gate(r: dict[str, Any], name: str) -> dict[str, Any]:
    return next(g for g in r["gates"] if g["name"] == name)


def finite_everywhere(x: Any) -> None:
    json.dumps(x, allow_nan=False)


# ---------------------------------------------------------------------------------- item 1
def test_item1_srm_an_empty_arm_is_a_mismatch_and_holds() -> None:
    """Split 0.5 configured, all 3,000 units on the champion: a mismatch (hold), never a
    'shadow evidence only' promote."""
    recs, outs = dataset(SynthSpec(n=9000, units=3000, zipf_s=0.0, split=0.0, seed=31))
    assert len({r["unit"] for r in recs}) > 2800
    r = build_report(
        recs,
        outs,
        experiment="synth",
        split=0.5,
        policy=Policy(min_samples=100, guardrails=Guardrails(max_accuracy_drop=None)),
    )
    assert r["srm"]["mismatch"] is True
    assert r["srm"]["state"] == "ok"
    assert r["decision"]["action"] == "hold", r["decision"]
    assert gate(r, "srm")["state"] == "fail"


# ---------------------------------------------------------------------------------- item 2
def _labelled_pairs(
    both: int, champ_only: int, chall_only: int, neither: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Mirrored pairs with label 1: a model is right when it says 0.9, wrong at 0.1."""
    pattern = [(0.9, 0.9)] * both + [(0.9, 0.1)] * champ_only + [(0.1, 0.9)] * chall_only
    pattern += [(0.1, 0.1)] * neither
    recs, outs = [], []
    for i, (a, b) in enumerate(pattern):
        recs.append(record(i, champion=side(a), challenger=side(b)))
        outs.append({"request_id": f"r{i}", "metric": "label", "value": 1.0, "ts": T0 + i})
    return recs, outs


QUALITY = Policy(min_samples=100, guardrails=Guardrails(max_accuracy_drop=0.02, max_psi=None))


def test_item2_accuracy_gate_rolls_back_only_when_the_bound_is_past_the_tolerance() -> None:
    """Accuracy 2.5 points lower, McNemar p = 0.002 against *no difference*, but the upper
    confidence bound (about -1 point) is within the 2-point tolerance: not a rollback."""
    recs, outs = _labelled_pairs(1700, 150, 100, 50)
    r = build_report(recs, outs, experiment="t", policy=QUALITY)
    assert r["decision"]["action"] == "continue", r["decision"]
    acc = r["quality"]["tests"]["accuracy"]
    assert acc["delta"] == pytest.approx(-0.025)
    assert acc["mcnemar"]["p_value"] < 0.01  # "different", but not "worse by more than 2 points"
    g = gate(r, "accuracy_drop")
    assert g["state"] == "inconclusive" and not g["significant"], g
    assert g["ci"][1] > -0.02 and g["always_valid"]
    # far past the tolerance it does roll back
    recs, outs = _labelled_pairs(1500, 400, 50, 50)
    r = build_report(recs, outs, experiment="t", policy=QUALITY)
    assert gate(r, "accuracy_drop")["state"] == "fail"
    assert r["decision"]["action"] == "rollback"


# ---------------------------------------------------------------------------------- item 3
def test_item3_one_errored_challenger_request_does_not_roll_back() -> None:
    policy = Policy(min_samples=100)
    live = [
        record(0, served="champion", mirrored=False, champion=side(0.4)),
        record(1, served="challenger", mirrored=False, challenger=side(None, 503)),
    ]
    r = build_report(live, [], experiment="t", policy=policy, split=0.5)
    assert r["decision"]["action"] == "continue", r["decision"]
    g = gate(r, "error_rate_delta")
    assert g["state"] in ("not_enough_data", "inconclusive") and not g["significant"]
    lo, hi = r["errors"]["live_delta"]["ci"]
    assert lo is not None and hi is not None and hi - lo > 0.5  # one request says little
    # two mirrored pairs, the challenger failing both: still far from evidence
    pairs = [record(i, champion=side(0.4), challenger=side(None, 503)) for i in range(2)]
    r = build_report(pairs, [], experiment="t", policy=policy)
    assert r["decision"]["action"] == "continue", r["decision"]
    assert not gate(r, "error_rate_delta")["significant"]
    lo, hi = r["errors"]["paired"]["ci"]
    assert lo is not None and hi is not None and hi - lo > 0.5


# ---------------------------------------------------------------------------------- item 4
def test_item4_value_divergence_is_exact_near_1e8() -> None:
    rng = np.random.default_rng(4)
    n = 2000
    x = 1e8 + rng.normal(0, 1000, n).round(3)
    y = x + 0.5 + rng.normal(0, 0.1, n).round(3)
    recs = [
        record(i, champion=side(float(a)), challenger=side(float(b)))
        for i, (a, b) in enumerate(zip(x, y, strict=True))
    ]
    policy = Policy(min_samples=100, prediction_kind="value")
    r = build_report(recs, [], experiment="t", policy=policy)
    d = y - x
    div = r["divergence"]
    assert div["rmse"] == pytest.approx(math.sqrt(np.mean(d * d)), rel=1e-9)
    assert div["mean_abs_diff"] == pytest.approx(np.mean(np.abs(d)), rel=1e-9)
    ref = st.ttest_1samp(d, 0.0)
    msd = div["mean_signed_diff"]
    assert msd["p_value"] == pytest.approx(ref.pvalue, rel=1e-6, abs=1e-300)
    ci = ref.confidence_interval(0.95)
    assert msd["ci"][0] == pytest.approx(ci.low, rel=1e-9)
    assert msd["ci"][1] == pytest.approx(ci.high, rel=1e-9)
    assert div["pearson"] == pytest.approx(st.pearsonr(x, y).statistic, rel=1e-9)


# ---------------------------------------------------------------------------------- item 5
def test_item5_latency_quantile_interval_says_not_enough_data_when_clipped() -> None:
    recs = [
        record(
            i,
            served="challenger" if i % 2 else "champion",
            mirrored=False,
            champion=side(0.3, lat=10.0 + i % 17),
            challenger=side(0.3, lat=11.0 + i % 13),
        )
        for i in range(120)
    ]
    for r_ in recs:
        r_["champion" if r_["served"] == "challenger" else "challenger"] = None
    policy = Policy(min_samples=10, guardrails=Guardrails(max_latency_p95_ms=1000.0))
    r = build_report(recs, [], experiment="t", policy=policy, split=0.5)
    ch = r["latency"]["per_variant"]["challenger"]
    assert ch["n"] == 60
    assert ch["p95_ci"][1] is None and ch["ci_state"]["p95"] == "not_enough_data"
    assert ch["ci_state"]["p50"] == "ok"
    g = gate(r, "latency_p95")
    assert g["state"] == "not_enough_data" and not g["passed"] and not g["significant"]
    assert r["decision"]["action"] == "continue"
    # the upper rank of the 95% interval of p95 is clipped below n = 72, of p99 below n = 368
    assert quantiles.quantile_interval(71, 0.95).state == "not_enough_data"
    assert quantiles.quantile_interval(72, 0.95).state == "ok"
    assert quantiles.quantile_interval(367, 0.99).state == "not_enough_data"
    assert quantiles.quantile_interval(368, 0.99).state == "ok"


# ---------------------------------------------------------------------------------- item 6
def test_item6_zero_variance_is_degenerate_not_certain() -> None:
    w = stats.welch(1.0, 0.0, 50, 2.0, 0.0, 50)
    assert w.state == "zero_variance"
    assert w.pvalue == 1.0 and w.ci.low is None and w.ci.high is None
    pm = stats.paired_mean(50, 25.0, 12.5)  # every difference exactly 0.5
    assert pm.state == "zero_variance" and pm.pvalue == 1.0 and pm.ci.low is None
    # n = 1 per arm: no p-value beside "not enough data"
    recs = [
        record(0, served="champion", mirrored=False, champion=side(0.3)),
        record(1, served="challenger", mirrored=False, challenger=side(0.3)),
    ]
    outs = [{"request_id": "r1", "metric": "converted", "value": 1.0}]
    policy = Policy(min_samples=1, metrics={"converted": MetricSpec(type="proportion")})
    r = build_report(recs, outs, experiment="t", policy=policy, split=0.5)
    up = r["metrics"]["converted"]["uplift"]
    assert up["state"] == "not_enough_data"
    assert up["p_value"] is None and up["ci"] == [None, None]
    assert up["sequential_p_value"] is None
    finite_everywhere(r)


# ---------------------------------------------------------------------------------- item 7
def test_item7_the_label_is_analysed_in_quality_only() -> None:
    recs, outs = dataset(SynthSpec(n=3000, seed=37))
    r = build_report(recs, outs, experiment="synth", split=0.5, policy=Policy(min_samples=10))
    assert r["quality"]["n"] > 500
    assert "label" not in r["metrics"]
    conv = r["metrics"]["converted"]["uplift"]
    assert conv["p_value_holm"] == conv["p_value"]  # a family of one


# ---------------------------------------------------------------------------------- item 8
def test_item8_request_metrics_use_unit_clustered_variance() -> None:
    """Per-request clicks of users with very different propensities: the uplift's variance is
    the delta method on unit sums (as GrowthBook's RatioStatistic), not requests as if
    independent."""
    from gbstats.frequentist.tests import FrequentistConfig, TwoSidedTTest
    from gbstats.models.statistics import RatioStatistic, SampleMeanStatistic

    rng = np.random.default_rng(8)
    recs, outs = [], []
    per_arm: dict[str, list[tuple[int, int]]] = {"champion": [], "challenger": []}
    i = 0
    for u in range(600):
        arm = "challenger" if u % 2 else "champion"
        k = int(rng.integers(1, 30))
        p = float(rng.beta(0.5, 2.0))
        clicks = 0
        for _ in range(k):
            recs.append(record(i, served=arm, mirrored=False, unit=f"user{u}", **{arm: side(0.3)}))  # type: ignore[arg-type]
            if rng.random() < p:
                outs.append({"request_id": f"r{i}", "metric": "clicked", "value": 1.0})
                clicks += 1
            i += 1
        per_arm[arm].append((clicks, k))
    policy = Policy(
        min_samples=10, metrics={"clicked": MetricSpec(type="proportion", per="request")}
    )
    r = build_report(recs, outs, experiment="t", policy=policy, split=0.5)
    m = r["metrics"]["clicked"]

    def ratio(rows: list[tuple[int, int]]) -> RatioStatistic:
        xs = np.array([a for a, _ in rows], float)
        ns = np.array([b for _, b in rows], float)
        k = len(rows)
        return RatioStatistic(
            n=k,
            m_statistic=SampleMeanStatistic(n=k, sum=xs.sum(), sum_squares=(xs * xs).sum()),
            d_statistic=SampleMeanStatistic(n=k, sum=ns.sum(), sum_squares=(ns * ns).sum()),
            m_d_sum_of_products=(xs * ns).sum(),
        )

    a, b = ratio(per_arm["champion"]), ratio(per_arm["challenger"])
    ref = TwoSidedTTest(a, b, FrequentistConfig(difference_type="absolute")).compute_result()
    up = m["uplift"]
    assert up["absolute"] == pytest.approx(ref.expected, rel=1e-9)
    assert up["ci"][0] == pytest.approx(ref.ci[0], rel=1e-9)
    assert up["ci"][1] == pytest.approx(ref.ci[1], rel=1e-9)
    assert up["p_value"] == pytest.approx(ref.p_value, rel=1e-6)
    assert m["variants"]["champion"]["units"] == 300
    assert m["variants"]["champion"]["n"] == sum(k for _, k in per_arm["champion"])
