"""The decision framework of the policy's metric table: every outcome metric is a **goal** (must
improve by ``min_uplift``), a **guardrail** (must not be worse than ``margin``: a one-sided
non-inferiority test) or **monitor** only (reported, never gating).

Each goal and guardrail is a gate row ``metric_<name>`` judged on the metric's always-valid
interval (mSPRT confidence sequence; relative with the delta method when ``relative``; the
CUPED-adjusted one when ``cuped.decide_on: adjusted``), oriented by ``higher_is_better``:

* goal: pass when the interval's lower bound clears ``min_uplift``; fail (rollback, kind
  ``goal``) when the whole interval is below 0 (significant harm); else inconclusive.
* guardrail: pass when the interval's worse-side bound stays within ``-margin``; fail (rollback,
  kind ``guardrail``) when the whole interval lies past it; else inconclusive. One bound of the
  two-sided interval at alpha is a one-sided test at alpha/2 at most (conservative), valid at
  every look.

:func:`decision_table` lays the rows out as the table the decision follows from (one line per
metric with its role, threshold, interval and verdict), added to the decision.
"""

from __future__ import annotations

from typing import Any

from router.analysis.gates.rows import CS_NORMAL, ci_text, row
from router.analysis.gates.rules import (
    FAIL,
    INCONCLUSIVE,
    NOT_ENOUGH_DATA,
    NOT_EVALUABLE,
    PASS,
    primary_state,
    state_of,
)
from router.analysis.policy import MetricSpec, Policy


def _interval(m: dict[str, Any], spec: MetricSpec, policy: Policy) -> tuple[Any, Any, str, Any]:
    """(low, high, what, state) of the metric's always-valid interval for its decision."""
    up, what = m["uplift"], "uplift"
    cu = m.get("cuped") or {}
    if policy.cuped.decide_on == "adjusted" and cu.get("state") == "ok" and cu.get("adjusted"):
        up, what = cu["adjusted"], "CUPED-adjusted uplift"
    lo, hi = up["relative_sequential_ci"] if spec.relative else up["sequential_ci"]
    state = up.get("relative_state") if spec.relative and up["state"] == "ok" else up["state"]
    return lo, hi, what, state


def metric_gates(report: dict[str, Any], policy: Policy, live: bool) -> list[dict[str, Any]]:
    out = []
    pm = policy.primary_metric
    for name, spec in policy.metrics.items():
        if spec.role == "monitor" or (pm is not None and pm.name == name):
            continue
        out.append(_gate(report, policy, name, spec, live))
    return out


def _gate(
    report: dict[str, Any], policy: Policy, name: str, spec: MetricSpec, live: bool
) -> dict[str, Any]:
    sign = 1 if spec.higher_is_better else -1
    rel = " (relative)" if spec.relative else ""
    goal = spec.role == "goal"
    threshold = spec.min_uplift if goal else -spec.margin
    if goal:
        nh = (
            f"{name}'s improvement{rel} is at most {spec.min_uplift:g} (promote rejects it); it "
            "is at least 0 (rollback rejects it)"
        )
    else:
        nh = f"{name} is worse{rel} than the margin {spec.margin:g} (pass rejects it)"
    test = CS_NORMAL + (" on the relative uplift (delta method)" if spec.relative else "")
    m = report["metrics"].get(name)

    def gate(state: str, value: Any, reason: str, ci: Any = None) -> dict[str, Any]:
        r = row(
            f"metric_{name}",
            spec.role,
            state,
            value,
            threshold,
            reason,
            null_hypothesis=nh,
            test=test,
            always_valid=True,
            ci=ci,
            better="higher",
        )
        r["role"] = spec.role
        r["metric"] = name
        return r

    if not live:
        return gate("not_applicable", None, "no live split: judged in the split steps")
    if m is None:
        return gate(NOT_ENOUGH_DATA, None, f"no outcomes for metric {name!r} yet")
    lo, hi, what, st = _interval(m, spec, policy)
    if st == "not_enough_data":
        return gate(NOT_ENOUGH_DATA, None, f"{name}: fewer than 2 units in an arm")
    if lo is None or hi is None:
        return gate(NOT_EVALUABLE, None, f"{name}: {st}")
    low, high = (lo, hi) if sign > 0 else (-hi, -lo)  # oriented: higher is better
    if goal:
        state = state_of(primary_state(low, high, spec.min_uplift))
        why = (
            f"goal {name}: always-valid {what} interval {ci_text(low, high)}{rel}, needs lower "
            f"bound > {spec.min_uplift:g}"
        )
        if state == FAIL:
            why += "; harmful: the whole interval is below 0"
    else:
        state = FAIL if high < threshold else PASS if low >= threshold else INCONCLUSIVE
        why = (
            f"guardrail {name}: always-valid {what} interval {ci_text(low, high)}{rel} "
            f"against the margin {threshold:g}"
        )
        if state == FAIL:
            why += "; significantly worse than the margin"
    return gate(state, low, why, [low, high])


def decision_table(gates: list[dict[str, Any]], report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per goal and guardrail (the primary metric first): role, threshold, interval and
    verdict, in the words of the decision."""
    verdict = {PASS: "met", FAIL: "breached", INCONCLUSIVE: "not yet decided"}
    out = []
    for g in gates:
        if g["name"] == "primary_metric" or g["name"].startswith("metric_"):
            metric = g.get("metric") or g["name"].removeprefix("metric_")
            out.append(
                {
                    "metric": metric,
                    "role": g.get("role", "goal"),
                    "threshold": g["threshold"],
                    "ci": g["ci"],
                    "state": g["state"],
                    "verdict": verdict.get(g["state"], g["state"].replace("_", " ")),
                    "reason": g["reason"],
                }
            )
    return out
