"""The label-joined tolerance gates (tested, always valid, on both models' predictions for the
same labelled requests): the accuracy drop of class and score predictions, the RMSE increase of
value predictions."""

from __future__ import annotations

from functools import partial
from typing import Any

from router.analysis import sequential as sq
from router.analysis.gates.rows import CS_BOUNDED, CS_NORMAL, NO_PAIRS, ci_text, fmt, row
from router.analysis.gates.rules import (
    NOT_APPLICABLE,
    NOT_ENOUGH_DATA,
    NOT_EVALUABLE,
    interval_state,
    paired_tolerance_state,
    state_of,
)
from router.analysis.policy import Policy


def quality_gates(report: dict[str, Any], policy: Policy) -> list[dict[str, Any]]:
    """The tolerance gate of this prediction kind that the policy sets (``missing``: the reason
    when no labelled pair is there to judge, a template naming the guardrail's key)."""
    g = policy.guardrails
    qual = report["quality"]
    kind = report["divergence"]["kind"]
    out: list[dict[str, Any]] = []
    label = qual["label_metric"]
    missing = (
        f"no mirrored pairs joined to a {label!r} outcome: set guardrails.{{}}: null if "
        "the application posts no labels"
    )
    if report["counts"]["mirrored_pairs"] == 0:
        # both models on the same labelled requests need mirroring: judged in mirrored steps
        missing_state, missing = NOT_APPLICABLE, NO_PAIRS
    else:
        missing_state = NOT_EVALUABLE
    if kind != "value" and g.max_accuracy_drop is not None:
        out.append(_accuracy_drop(qual, g.max_accuracy_drop, policy.alpha, missing_state, missing))
    if kind == "value" and g.max_rmse_increase is not None:
        out.append(_rmse_increase(qual, g.max_rmse_increase, missing_state, missing))
    return out


def _accuracy_drop(
    qual: dict[str, Any], tol: float, alpha: float, missing_state: str, missing: str
) -> dict[str, Any]:
    nh = f"challenger − champion accuracy is at least −{tol:g}"
    gate = partial(row, "accuracy_drop", "guardrail", null_hypothesis=nh,
                   test=CS_BOUNDED + " (paired)", always_valid=True, better="higher")  # fmt: skip
    acc = qual.get("tests", {}).get("accuracy")
    if acc is None:
        return gate(missing_state, None, -tol, missing.format("max_accuracy_drop"))
    n = qual["n"]
    b, c = acc["discordant"]
    lo, hi = sq.bounded_mean_cs(n, (c - b) / n, (b + c) - (c - b) ** 2 / n, -1, 1, alpha)
    state = state_of(paired_tolerance_state(n, b, c, -tol, "higher", alpha))
    why = (
        f"challenger − champion accuracy {fmt(acc['delta'])} on {n} labelled pairs,"
        f" always-valid interval {ci_text(float(lo), float(hi))} (McNemar "
        f"p={fmt(acc['mcnemar']['p_value'])} against no difference)"
    )
    return gate(state, acc["delta"], -tol, why, ci=[float(lo), float(hi)])


def _rmse_increase(
    qual: dict[str, Any], tol: float, missing_state: str, missing: str
) -> dict[str, Any]:
    nh = f"challenger RMSE / champion RMSE − 1 is at most {tol:g}"
    gate = partial(row, "rmse_increase", "guardrail", null_hypothesis=nh, test=CS_NORMAL,
                   always_valid=True, better="lower")  # fmt: skip
    r = qual.get("tests", {}).get("rmse_ratio")
    if r is None:
        return gate(missing_state, None, tol, missing.format("max_rmse_increase"))
    if r["state"] != "ok":
        state = NOT_ENOUGH_DATA if r["state"] == "not_enough_data" else NOT_EVALUABLE
        return gate(state, r["estimate"], tol, f"RMSE ratio: {r['state']}")
    lo, hi = r["sequential_ci"]
    state = state_of(interval_state(lo, hi, tol, "lower"))
    why = (
        f"challenger RMSE / champion RMSE − 1 = {fmt(r['estimate'])} on {r['n']} "
        f"labelled pairs, always-valid interval {ci_text(lo, hi)}"
    )
    test = CS_NORMAL + " on log(MSE ratio), delta method"
    return gate(state, r["estimate"], tol, why, test=test, ci=[lo, hi])
