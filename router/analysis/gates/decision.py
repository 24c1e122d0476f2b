"""Every gate of a report, then the decision: rollback > hold > continue > promote (the rule is
in the package docstring, :mod:`router.analysis.gates`)."""

from __future__ import annotations

from typing import Any

from router.analysis.data_quality import data_quality_gates, empty_window_decision
from router.analysis.gates import (
    descriptive,
    divergence,
    evidence,
    guardrails,
    metric_roles,
    primary,
    quality,
)
from router.analysis.gates.rules import (
    FAIL,
    INCONCLUSIVE,
    NOT_ENOUGH_DATA,
    NOT_EVALUABLE,
    PASS,
    WAITING,
    WARN,
)
from router.analysis.policy import Policy

ROLLBACK_KINDS = ("guardrail", "schema", "primary", "goal")


def evaluate(report: dict[str, Any], policy: Policy) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """All gates of a report, then the decision."""
    gates: list[dict[str, Any]] = []
    live = evidence.live(report)
    gates.append(evidence.min_samples(report, policy, live))
    gates.append(evidence.srm(report, policy))
    if policy.srm.by_segment:
        gates.append(evidence.srm_segments(report, policy))
    g = policy.guardrails
    if g.max_latency_p95_ms is not None:
        gates.append(guardrails.latency_p95(report, g.max_latency_p95_ms))
    if g.max_latency_regression_ms is not None:
        gates.append(guardrails.latency_regression(report, g.max_latency_regression_ms))
    if g.max_error_rate_delta is not None:
        gates.append(guardrails.error_rate(report, g.max_error_rate_delta, policy.alpha))
    gates.extend(quality.quality_gates(report, policy))
    if g.max_contract_break_share is not None:
        gates.append(guardrails.contract(report, g.max_contract_break_share, policy.alpha))
    gates.extend(descriptive.drift_gates(report, policy))
    gates.extend(divergence.divergence_gates(report, policy))
    gates.extend(descriptive.fairness_gates(report, policy))
    if policy.primary_metric is not None:
        gates.append(primary.primary_metric(report, policy, live))
    gates.extend(metric_roles.metric_gates(report, policy, live))
    gates += data_quality_gates(report, policy, gates)
    return gates, decide(gates, report)


def decide(
    gates: list[dict[str, Any]], report: dict[str, Any], policy: Policy | None = None
) -> dict[str, Any]:
    """Rollback > hold > continue (waiting on evidence) > promote (see
    :mod:`router.analysis.gates`)."""
    del policy  # the rows carry their thresholds
    decision = _decide(gates, report)
    table = metric_roles.decision_table(gates, report)
    if table:
        decision["metrics"] = table  # the goals and guardrails the decision follows from
    return decision


def _decide(gates: list[dict[str, Any]], report: dict[str, Any]) -> dict[str, Any]:
    warnings = [f"warning: {g['name']}: {g['reason']}" for g in gates if g["state"] == WARN]
    if report["counts"]["records"] == 0:
        return empty_window_decision(report)
    failed = [g for g in gates if g["state"] == FAIL]
    rollback = [g for g in failed if g["kind"] in ROLLBACK_KINDS]
    if rollback:
        return {
            "action": "rollback",
            "reasons": [f"{g['name']} significantly worse: {g['reason']}" for g in rollback]
            + warnings,
        }
    if failed:
        return {
            "action": "hold",
            "reasons": [f"{g['name']} failed: {g['reason']}" for g in failed] + warnings,
        }
    reasons = []
    sample = next((g for g in gates if g["name"] == "min_samples"), None)
    if sample is not None and sample["state"] != PASS:
        reasons.append(f"not enough data: {sample['reason']}")
    for g in gates:
        if g["state"] in WAITING and g is not sample:
            what = {
                INCONCLUSIVE: "not yet conclusive",
                NOT_ENOUGH_DATA: "not enough data",
                NOT_EVALUABLE: "cannot be evaluated",
            }[g["state"]]
            reasons.append(f"{g['name']} {what}: {g['reason']}")
    if reasons:
        eta = next((g.get("eta_s") for g in gates if g["name"] == "primary_metric"), None)
        if eta is not None:
            reasons.append(f"estimated time to the primary metric's sample size: {eta:.0f} s")
        return {"action": "continue", "reasons": reasons + warnings}
    why = ["all gates pass"]
    primary = next((g for g in gates if g["name"] == "primary_metric"), None)
    if primary is not None and primary["state"] == PASS:
        why.append(f"primary metric cleared: {primary['reason']}")
    elif primary is not None:
        why.append("shadow evidence only: no live split in this window")
    return {"action": "promote", "reasons": why + warnings}
