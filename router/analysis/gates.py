"""Gates and the promotion decision (pure: report sections in, gate rows and a decision out).

Each gate is ``{name, kind, passed, value, threshold, reason, significant}``. ``kind`` decides what
a failure means:

* ``guardrail`` failed *significantly* (the confidence bound is past the threshold) → rollback;
  failed on the point estimate only → continue (more data will tell);
* ``schema`` (systematic response-contract break) → rollback;
* ``srm``, ``fairness``, ``drift`` failed → hold (a human must look: the data or the population
  is wrong, not necessarily the model); so does ``data`` (too many invalid records, see
  :mod:`router.analysis.data_quality`);
* ``sample`` failed → continue, "not enough data";
* ``primary``: promote when the sequential lower bound clears ``min_uplift``; rollback when the
  sequential interval lies entirely on the harmful side of zero.
"""

from __future__ import annotations

from typing import Any

from router.analysis.data_quality import data_quality_gates, empty_window_decision
from router.analysis.policy import Policy


def _gate(
    name: str,
    kind: str,
    passed: bool,
    value: Any,
    threshold: Any,
    reason: str,
    significant: bool = False,
) -> dict[str, Any]:
    return {
        "name": name,
        "kind": kind,
        "passed": bool(passed),
        "value": value,
        "threshold": threshold,
        "reason": reason,
        "significant": bool(significant),
    }


def _fmt(x: Any, nd: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{nd}g}" if isinstance(x, float) else str(x)


def _live(report: dict[str, Any]) -> bool:
    return report["counts"]["units"]["challenger"] > 0 and report["counts"]["units"]["champion"] > 0


def evaluate(report: dict[str, Any], policy: Policy) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    gates: list[dict[str, Any]] = []
    g = policy.guardrails
    counts = report["counts"]
    live = _live(report)
    pairs = counts["comparable_pairs"]
    units = counts["units"]

    # ---- evidence
    if live:
        n = min(units["champion"], units["challenger"])
        what = "units in the smaller arm of the live split"
    else:
        n = pairs
        what = "comparable mirrored pairs"
    gates.append(
        _gate(
            "min_samples",
            "sample",
            n >= policy.min_samples,
            n,
            policy.min_samples,
            f"{n} {what} (need {policy.min_samples})",
        )
    )

    # ---- sample ratio
    srm = report["srm"]
    gates.append(
        _gate(
            "srm",
            "srm",
            not srm["mismatch"],
            srm["p_value"],
            policy.srm.alpha,
            f"{srm['reason']}: units champion {srm['observed']['champion']}, challenger "
            f"{srm['observed']['challenger']} for a split of {_fmt(srm['split'])} "
            f"(p={_fmt(srm['p_value'])}, max share deviation {_fmt(srm['max_share_diff'])})",
        )
    )

    # ---- latency
    lat = report["latency"]
    chall = "challenger"
    if g.max_latency_p95_ms is not None:
        served = lat["per_variant"][chall]
        paired_q = lat["paired"]["quantiles"]["p95"]
        if served["n"] >= 20:
            val, lo = served["p95"], served["p95_ci"][0]
            src = "served requests"
        else:
            val, lo = paired_q["challenger"], None
            src = "mirrored requests"
        if val is None:
            gates.append(
                _gate(
                    "latency_p95",
                    "guardrail",
                    True,
                    None,
                    g.max_latency_p95_ms,
                    "no challenger latencies yet",
                )
            )
        else:
            ok = val <= g.max_latency_p95_ms
            sig = (not ok) and lo is not None and lo > g.max_latency_p95_ms
            gates.append(
                _gate(
                    "latency_p95",
                    "guardrail",
                    ok,
                    val,
                    g.max_latency_p95_ms,
                    f"challenger p95 {val:.1f} ms on {src}",
                    sig,
                )
            )
    if g.max_latency_regression_ms is not None:
        q = lat["paired"]["quantiles"]["p95"]
        if q["delta_ms"] is None:
            gates.append(
                _gate(
                    "latency_regression",
                    "guardrail",
                    True,
                    None,
                    g.max_latency_regression_ms,
                    "no mirrored pairs with latencies",
                )
            )
        else:
            ok = q["delta_ms"] <= g.max_latency_regression_ms
            sig = (not ok) and (q["delta_lower_ms"] or 0.0) > g.max_latency_regression_ms
            gates.append(
                _gate(
                    "latency_regression",
                    "guardrail",
                    ok,
                    q["delta_ms"],
                    g.max_latency_regression_ms,
                    f"challenger p95 - champion p95 on the same requests: {q['delta_ms']:+.1f} ms",
                    sig,
                )
            )

    # ---- errors (paired when mirrored, else the live split)
    if g.max_error_rate_delta is not None:
        err = report["errors"]
        if err["paired"]["n"] >= 2:
            d, ci, src = err["paired"]["delta"], err["paired"]["ci"], "mirrored pairs"
        else:
            d, ci, src = (err["live_delta"]["estimate"], err["live_delta"]["ci"], "live split")
        if d is None:
            gates.append(
                _gate(
                    "error_rate_delta",
                    "guardrail",
                    True,
                    None,
                    g.max_error_rate_delta,
                    "no requests on both models yet",
                )
            )
        else:
            ok = d <= g.max_error_rate_delta
            sig = (not ok) and ci[0] is not None and ci[0] > g.max_error_rate_delta
            gates.append(
                _gate(
                    "error_rate_delta",
                    "guardrail",
                    ok,
                    d,
                    g.max_error_rate_delta,
                    f"challenger - champion error rate {d:+.4f} on {src} "
                    f"(CI {_fmt(ci[0])} .. {_fmt(ci[1])})",
                    sig,
                )
            )

    # ---- label-joined quality on the same requests
    qual = report["quality"]
    if qual.get("state") == "ok":
        tests = qual["tests"]
        models = qual["models"]
        if "accuracy" in tests and g.max_accuracy_drop is not None:
            t = tests["accuracy"]
            d = t["delta"]
            ok = d is None or d >= -g.max_accuracy_drop
            sig = (not ok) and t["p_value"] is not None and t["p_value"] < policy.alpha
            gates.append(
                _gate(
                    "accuracy_drop",
                    "guardrail",
                    ok,
                    d,
                    -g.max_accuracy_drop,
                    f"challenger - champion accuracy {_fmt(d)} on {qual['n']} labelled pairs "
                    f"(McNemar p={_fmt(t['p_value'])})",
                    sig,
                )
            )
        if "squared_error" in tests and g.max_rmse_increase is not None:
            r0, r1 = models["champion"].get("rmse"), models["challenger"].get("rmse")
            if r0 and r1 is not None:
                rel = r1 / r0 - 1
                t = tests["squared_error"]
                ok = rel <= g.max_rmse_increase
                sig = (not ok) and t["p_value"] is not None and t["p_value"] < policy.alpha
                gates.append(
                    _gate(
                        "rmse_increase",
                        "guardrail",
                        ok,
                        rel,
                        g.max_rmse_increase,
                        f"challenger RMSE {_fmt(r1)} vs champion {_fmt(r0)} on labelled pairs",
                        sig,
                    )
                )

    # ---- response contract
    div = report["divergence"]
    if g.max_contract_break_share is not None:
        share = div["contract"]["max_share"] or 0.0
        ok = share <= g.max_contract_break_share
        worst = div["contract"]["paths"][0] if div["contract"]["paths"] else None
        why = (
            f"{worst['change']} {worst['path']} in {share:.2%} of pairs"
            if worst
            else "no field differs above the noise share"
        )
        gates.append(
            _gate("response_contract", "schema", ok, share, g.max_contract_break_share, why, not ok)
        )

    # ---- prediction and input drift (a failure holds: the population needs a human)
    drift = (
        ("prediction_psi", div.get("psi"), g.max_psi,
         "challenger vs champion predictions on the same requests", "no score pairs to compare"),
        ("input_psi", report["drift"].get("max_psi"), g.max_input_psi,
         "largest PSI of a captured input field vs reference", "no reference for input drift"),
    )  # fmt: skip
    for name, value, limit, why, missing in drift:
        if limit is not None:
            ok = value is None or value <= limit
            reason = why if value is not None else missing
            gates.append(_gate(name, "drift", ok, value, limit, reason))

    # ---- fairness
    seg = report["segments"]
    if g.max_segment_gap is not None:
        gap = seg["gap"]
        val = gap.get("value")
        gates.append(
            _gate(
                "segment_gap",
                "fairness",
                val is None or val <= g.max_segment_gap,
                val,
                g.max_segment_gap,
                f"{gap['metric']}: {gap.get('segment')} {_fmt(gap.get('segment_value'))}"
                f" vs overall {_fmt(gap.get('overall'))}"
                if val is not None
                else gap.get("reason", "not enough data"),
            )
        )
    if g.min_disparity_ratio is not None:
        dr = seg["disparity"]
        val = dr.get("value")
        gates.append(
            _gate(
                "disparity_ratio",
                "fairness",
                val is None or val >= g.min_disparity_ratio,
                val,
                g.min_disparity_ratio,
                f"{dr['field']}: {dr['lowest']['value']} {_fmt(dr['lowest']['rate'])} vs "
                f"{dr['highest']['value']} {_fmt(dr['highest']['rate'])}"
                if val is not None
                else dr.get("reason", "not enough data"),
            )
        )

    # ---- primary metric (live split only)
    pm = policy.primary_metric
    primary: dict[str, Any] | None = None
    if pm is not None:
        m = report["metrics"].get(pm.name)
        if m is None:
            primary = _gate(
                "primary_metric",
                "primary",
                False,
                None,
                pm.min_uplift,
                f"no outcomes for metric {pm.name!r} yet",
            )
        elif not live:
            primary = _gate(
                "primary_metric",
                "primary",
                True,
                None,
                pm.min_uplift,
                "no live split: the primary metric is judged in the canary steps",
            )
            primary["evaluated"] = False
        else:
            up = m["uplift"]
            lo, hi = up["sequential_ci"]
            if pm.relative and up["absolute"] is not None:
                base = m["variants"]["champion"]["mean"] or 0.0
                lo = lo / abs(base) if lo is not None and base else None
                hi = hi / abs(base) if hi is not None and base else None
            if lo is None:
                primary = _gate(
                    "primary_metric",
                    "primary",
                    False,
                    None,
                    pm.min_uplift,
                    f"{pm.name}: {up['state']}",
                )
            else:
                sign = (
                    1
                    if policy.metrics.get(pm.name, None) is None
                    or policy.metrics[pm.name].higher_is_better
                    else -1
                )
                low = lo if sign > 0 else -hi
                high = hi if sign > 0 else -lo
                ok = low > pm.min_uplift
                harm = high is not None and high < 0
                unit = " (relative)" if pm.relative else ""
                primary = _gate(
                    "primary_metric",
                    "primary",
                    ok,
                    low,
                    pm.min_uplift,
                    f"{pm.name}: sequential CI [{_fmt(low)}, {_fmt(high)}]{unit}, "
                    f"needs lower bound > {pm.min_uplift}",
                    harm,
                )
                primary["eta_s"] = m.get("eta_s")
        gates.append(primary)

    gates += data_quality_gates(report, policy, gates)
    return gates, decide(gates, report, policy)


def decide(gates: list[dict[str, Any]], report: dict[str, Any], policy: Policy) -> dict[str, Any]:
    """Rollback > hold > continue (not enough data) > promote > continue."""
    if report["counts"]["records"] == 0:
        return empty_window_decision(report)
    failed = [g for g in gates if not g["passed"]]
    rollback = [
        g for g in gates if g["significant"] and (not g["passed"] or g["kind"] == "primary")
    ]
    if rollback:
        return {
            "action": "rollback",
            "reasons": [f"{g['name']} significantly worse: {g['reason']}" for g in rollback],
        }
    hold = [g for g in failed if g["kind"] in ("srm", "fairness", "drift", "data")]
    if hold:
        return {"action": "hold", "reasons": [f"{g['name']} failed: {g['reason']}" for g in hold]}
    reasons = []
    sample = next(g for g in gates if g["name"] == "min_samples")
    if not sample["passed"]:
        reasons.append(f"not enough data: {sample['reason']}")
    for g in failed:
        if g["kind"] in ("guardrail", "primary"):
            reasons.append(f"{g['name']} not yet passing: {g['reason']}")
    eta = next((g.get("eta_s") for g in gates if g["name"] == "primary_metric"), None)
    if reasons:
        if eta is not None:
            reasons.append(f"estimated time to the primary metric's sample size: {eta:.0f} s")
        return {"action": "continue", "reasons": reasons}
    why = ["all gates pass"]
    primary = next((g for g in gates if g["name"] == "primary_metric"), None)
    if primary is not None and primary.get("evaluated", True):
        why.append(f"primary metric cleared: {primary['reason']}")
    elif primary is not None:
        why.append("shadow evidence only: no live split in this window")
    return {"action": "promote", "reasons": why}
