"""The primary metric's gate: the challenger's uplift on the live split, with its always-valid
interval; promote needs its lower bound past ``min_uplift``, an interval wholly below zero is harm
and rolls back."""

from __future__ import annotations

from typing import Any

from router.analysis.gates.rows import CS_NORMAL, ci_text, row
from router.analysis.gates.rules import (
    FAIL,
    NOT_APPLICABLE,
    NOT_ENOUGH_DATA,
    NOT_EVALUABLE,
    primary_state,
    state_of,
)
from router.analysis.policy import Policy


def primary_metric(report: dict[str, Any], policy: Policy, live: bool) -> dict[str, Any]:
    pm = policy.primary_metric
    assert pm is not None
    spec = policy.metrics.get(pm.name)
    sign = 1 if spec is None or spec.higher_is_better else -1
    unit = " (relative)" if pm.relative else ""
    nh = (
        f"{pm.name}'s uplift{unit} is at most {pm.min_uplift:g} (promote rejects it); "
        "its uplift is at least 0 (rollback rejects it)"
    )
    test = CS_NORMAL + (" on the relative uplift (delta method)" if pm.relative else "")
    m = report["metrics"].get(pm.name)
    up = m["uplift"] if m is not None else None
    if m is not None and policy.cuped.decide_on == "adjusted":
        cu = m.get("cuped") or {}
        if cu.get("state") == "ok" and cu.get("adjusted"):
            up = cu["adjusted"]  # same keys as the unadjusted uplift
            test += ", on the CUPED-adjusted uplift"

    def gate(state: str, value: Any, reason: str, ci: Any = None) -> dict[str, Any]:
        r = row(
            "primary_metric",
            "primary",
            state,
            value,
            pm.min_uplift,
            reason,
            null_hypothesis=nh,
            test=test,
            always_valid=True,
            ci=ci,
            better="higher",
            p_value=up["sequential_p_value"] if up is not None else None,
        )
        r["eta_s"] = m.get("eta_s") if m is not None else None
        r["metric"] = pm.name
        return r

    if not live:
        return gate(
            NOT_APPLICABLE, None, "no live split: the primary metric is judged in the canary steps"
        )
    if m is None or up is None:
        return gate(NOT_ENOUGH_DATA, None, f"no outcomes for metric {pm.name!r} yet")
    lo, hi = up["relative_sequential_ci"] if pm.relative else up["sequential_ci"]
    if up["state"] == "not_enough_data":
        return gate(NOT_ENOUGH_DATA, None, f"{pm.name}: fewer than 2 units in an arm")
    if lo is None or hi is None:
        why = {
            "zero_variance": "no variance in either arm (every value equal): no test",
            "control_mean_zero": "the champion's mean is 0: no relative uplift",
        }.get(up.get("relative_state") if pm.relative else up["state"], up["state"])
        return gate(NOT_EVALUABLE, None, f"{pm.name}: {why}")
    low, high = (lo, hi) if sign > 0 else (-hi, -lo)
    state = state_of(primary_state(low, high, pm.min_uplift))
    why = (
        f"{pm.name}: always-valid interval {ci_text(low, high)}{unit}, needs lower bound > "
        f"{pm.min_uplift:g}" + ("; harmful: the whole interval is below 0" if state == FAIL else "")
    )
    return gate(state, low, why, [low, high])
