"""The policy's metric table: goals must improve, guardrails must not be worse than their margin
(one-sided, always valid), monitors only report; the decision follows from the table and says
so."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from router.analysis import build_report, parse_policy
from router.analysis.render import to_markdown

T0 = time.time() - 3600


def _data(n: int, effects: dict[str, float], seed: int) -> tuple[list[Any], list[Any]]:
    rng = np.random.default_rng(seed)
    side = {"version": "1", "status": 200, "latency_ms": 5.0, "prediction": 0.3, "error": None}
    recs, outs = [], []
    for i in range(n):
        arm = i % 2
        v = "challenger" if arm else "champion"
        other = "champion" if arm else "challenger"
        recs.append({"v": 1, "experiment": "e", "request_id": f"r{i}", "ts": T0 + i * 0.01,
                     "unit": f"u{i}", "bucket": 0, "served": v, "mirrored": False, "segment": {},
                     v: side, other: None, "contract": None})  # fmt: skip
        for name, eff in effects.items():
            outs.append({"v": 1, "experiment": "e", "request_id": f"r{i}", "metric": name,
                         "value": float(rng.normal(10 + eff * arm, 1))})  # fmt: skip
    return recs, outs


def _policy(**metrics: dict[str, Any]) -> Any:
    off = {"max_accuracy_drop": None, "max_rmse_increase": None}
    return parse_policy({"min_samples": 10, "metrics": metrics, "guardrails": off})


def test_goal_met_guardrail_within_margin_promotes_with_the_table() -> None:
    recs, outs = _data(6000, {"revenue": 0.3, "latency_s": 0.0, "clicks": -5.0}, seed=1)
    pol = _policy(
        revenue={"role": "goal", "min_uplift": 0.05},
        latency_s={"role": "guardrail", "margin": 0.2, "higher_is_better": False},
        clicks={"role": "monitor"},
    )
    rep = build_report(recs, outs, experiment="e", split=0.5, policy=pol)
    gates = {g["name"]: g for g in rep["gates"]}
    assert gates["metric_revenue"]["state"] == "pass" and gates["metric_revenue"]["kind"] == "goal"
    assert gates["metric_latency_s"]["state"] == "pass"
    assert "metric_clicks" not in gates  # monitor: reported only (it fell by 5, no matter)
    assert rep["decision"]["action"] == "promote"
    table = {r["metric"]: r for r in rep["decision"]["metrics"]}
    assert table["revenue"]["verdict"] == "met" and table["latency_s"]["role"] == "guardrail"
    md = to_markdown(rep)
    assert "## Goals and guardrails" in md
    row = next(ln for ln in md.splitlines() if ln.startswith("| **latency_s**"))
    assert "guardrail" in row and "PASS" in row and "met" in row


def test_breached_guardrail_rolls_back_and_says_why() -> None:
    # latency rises by 0.5 (lower is better) against a margin of 0.1
    recs, outs = _data(6000, {"revenue": 0.3, "latency_s": 0.5}, seed=2)
    pol = _policy(
        revenue={"role": "goal"},
        latency_s={"role": "guardrail", "margin": 0.1, "higher_is_better": False},
    )
    rep = build_report(recs, outs, experiment="e", split=0.5, policy=pol)
    g = next(g for g in rep["gates"] if g["name"] == "metric_latency_s")
    assert g["state"] == "fail" and g["ci"][1] < -0.1  # oriented: higher is better
    assert rep["decision"]["action"] == "rollback"
    assert any("metric_latency_s" in r for r in rep["decision"]["reasons"])


def test_relative_margin_and_an_undecided_goal_continue() -> None:
    recs, outs = _data(400, {"revenue": 0.0, "orders": 0.0}, seed=3)
    pol = _policy(
        revenue={"role": "goal", "min_uplift": 0.01, "relative": True},
        orders={"role": "guardrail", "margin": 0.05, "relative": True},
    )
    rep = build_report(recs, outs, experiment="e", split=0.5, policy=pol)
    gates = {g["name"]: g for g in rep["gates"]}
    assert gates["metric_revenue"]["state"] == "inconclusive"
    assert "relative" in gates["metric_orders"]["reason"]
    assert gates["metric_orders"]["state"] in ("pass", "inconclusive")
    assert rep["decision"]["action"] == "continue"


def test_simulated_guardrail_at_its_margin_rarely_passes_or_fails() -> None:
    # a true effect exactly at the margin: the one-sided always-valid test passes (wrongly)
    # at most alpha of the time; a true effect of 0 with a wide margin mostly passes
    from router.analysis import stats

    rng = np.random.default_rng(9)
    reps, n, margin = 400, 500, 0.2
    passed = 0
    for _ in range(reps):
        a, b = rng.normal(0, 1, n), rng.normal(-margin, 1, n)
        w = stats.welch(a.mean(), a.var(ddof=1), n, b.mean(), b.var(ddof=1), n)
        vd = a.var(ddof=1) / n + b.var(ddof=1) / n
        seq = stats.msprt(w.estimate or 0.0, vd, 0.1)
        passed += (seq.ci.low or 0.0) >= -margin
    assert passed / reps <= 0.05
