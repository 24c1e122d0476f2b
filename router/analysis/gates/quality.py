"""The label-joined tolerance gates (tested, always valid, on both models' predictions for the
same labelled requests): the accuracy drop of class and score predictions, the RMSE increase of
value predictions."""

from __future__ import annotations

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
        tol = g.max_accuracy_drop
        nh = f"challenger − champion accuracy is at least −{tol:g}"
        acc = qual.get("tests", {}).get("accuracy")
        if acc is None:
            out.append(
                row(
                    "accuracy_drop",
                    "guardrail",
                    missing_state,
                    None,
                    -tol,
                    missing.format("max_accuracy_drop"),
                    null_hypothesis=nh,
                    test=CS_BOUNDED + " (paired)",
                    always_valid=True,
                    better="higher",
                )
            )
        else:
            n = qual["n"]
            b, c = acc["discordant"]
            lo, hi = sq.bounded_mean_cs(
                n, (c - b) / n, (b + c) - (c - b) ** 2 / n, -1, 1, policy.alpha
            )
            state = state_of(paired_tolerance_state(n, b, c, -tol, "higher", policy.alpha))
            why = (
                f"challenger − champion accuracy {fmt(acc['delta'])} on {n} labelled pairs,"
                f" always-valid interval {ci_text(float(lo), float(hi))} (McNemar "
                f"p={fmt(acc['mcnemar']['p_value'])} against no difference)"
            )
            out.append(
                row(
                    "accuracy_drop",
                    "guardrail",
                    state,
                    acc["delta"],
                    -tol,
                    why,
                    null_hypothesis=nh,
                    test=CS_BOUNDED + " (paired)",
                    always_valid=True,
                    ci=[float(lo), float(hi)],
                    better="higher",
                )
            )
    if kind == "value" and g.max_rmse_increase is not None:
        tol = g.max_rmse_increase
        nh = f"challenger RMSE / champion RMSE − 1 is at most {tol:g}"
        r = qual.get("tests", {}).get("rmse_ratio")
        if r is None:
            out.append(
                row(
                    "rmse_increase",
                    "guardrail",
                    missing_state,
                    None,
                    tol,
                    missing.format("max_rmse_increase"),
                    null_hypothesis=nh,
                    test=CS_NORMAL,
                    always_valid=True,
                    better="lower",
                )
            )
        elif r["state"] != "ok":
            out.append(
                row(
                    "rmse_increase",
                    "guardrail",
                    NOT_ENOUGH_DATA if r["state"] == "not_enough_data" else NOT_EVALUABLE,
                    r["estimate"],
                    tol,
                    f"RMSE ratio: {r['state']}",
                    null_hypothesis=nh,
                    test=CS_NORMAL,
                    always_valid=True,
                    better="lower",
                )
            )
        else:
            lo, hi = r["sequential_ci"]
            state = state_of(interval_state(lo, hi, tol, "lower"))
            why = (
                f"challenger RMSE / champion RMSE − 1 = {fmt(r['estimate'])} on {r['n']} "
                f"labelled pairs, always-valid interval {ci_text(lo, hi)}"
            )
            out.append(
                row(
                    "rmse_increase",
                    "guardrail",
                    state,
                    r["estimate"],
                    tol,
                    why,
                    null_hypothesis=nh,
                    test=CS_NORMAL + " on log(MSE ratio), delta method",
                    always_valid=True,
                    ci=[lo, hi],
                    better="lower",
                )
            )
    return out
