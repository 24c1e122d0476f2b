"""Descriptive gates (a threshold on a point estimate, no test; a failure holds): prediction and
input drift (PSI), and fairness across segments (the largest gap, the disparity ratio)."""

from __future__ import annotations

from functools import partial
from typing import Any

from router.analysis.gates.rows import NO_PAIRS, NO_TEST, fmt, row
from router.analysis.gates.rules import FAIL, NOT_APPLICABLE, NOT_ENOUGH_DATA, PASS
from router.analysis.policy import Policy

# a threshold on the point estimate: no test, not valid under repeated looks
_descriptive = partial(row, test=NO_TEST, always_valid=False, tested=False)


def drift_gates(report: dict[str, Any], policy: Policy) -> list[dict[str, Any]]:
    g = policy.guardrails
    out: list[dict[str, Any]] = []
    div = report["divergence"]
    if g.max_psi is not None:
        nh = "prediction PSI (challenger vs champion, same requests) at most the limit"
        need = 10 * policy.divergence.psi_bins
        if div["kind"] != "score":
            state, why, val = NOT_APPLICABLE, f"no PSI for {div['kind']} predictions", None
        elif report["counts"]["mirrored_pairs"] == 0:
            state, why, val = NOT_APPLICABLE, NO_PAIRS, None
        elif div.get("sample", {}).get("n", 0) < need or div.get("psi") is None:
            n_s = div.get("sample", {}).get("n", 0)
            state, why, val = NOT_ENOUGH_DATA, f"{n_s} score pairs (PSI needs {need})", None
        else:
            val = div["psi"]
            state = FAIL if val > g.max_psi else PASS
            why = f"challenger vs champion predictions on the same requests: PSI {val:.4g}"
        out.append(
            _descriptive("prediction_psi", "drift", state, val, g.max_psi, why, null_hypothesis=nh)
        )
    if g.max_input_psi is not None:
        drift = report["drift"]
        nh = "largest PSI of a captured input field vs the reference at most the limit"
        val = drift.get("max_psi")
        if drift.get("state") != "ok":
            state, why = NOT_APPLICABLE, "no reference for input drift"
        elif val is None:
            state, why = NOT_ENOUGH_DATA, "no captured input field matches the reference"
        else:
            state = FAIL if val > g.max_input_psi else PASS
            why = f"largest PSI of a captured input field vs reference: {val:.4g}"
        out.append(
            _descriptive("input_psi", "drift", state, val, g.max_input_psi, why, null_hypothesis=nh)
        )
    if g.max_drifted_share is not None:
        drift = report["drift"]
        nh = "share of captured input fields drifted (size-chosen test) at most the limit"
        val = drift.get("drifted_share")
        if drift.get("state") != "ok":
            state, why = NOT_APPLICABLE, "no reference for input drift"
        elif val is None:
            state, why = NOT_ENOUGH_DATA, "no captured input field could be tested"
        else:
            state = FAIL if val > g.max_drifted_share else PASS
            names = ", ".join(drift["drifted_fields"][:5]) or "none"
            why = f"{len(drift['drifted_fields'])} fields drifted ({names}): share {val:.4g}"
        out.append(_descriptive("input_drift", "drift", state, val, g.max_drifted_share, why,
                                null_hypothesis=nh))  # fmt: skip
    return out


def fairness_gates(report: dict[str, Any], policy: Policy) -> list[dict[str, Any]]:
    g = policy.guardrails
    seg = report["segments"]
    out: list[dict[str, Any]] = []
    no_fields = not seg["fields"]
    if g.max_segment_gap is not None:
        gap = seg["gap"]
        val = gap.get("value")
        nh = "no segment's figure differs from the overall by more than the limit"
        if no_fields:
            state, why = NOT_APPLICABLE, "no segment fields recorded"
        elif val is None:
            state, why = NOT_ENOUGH_DATA, gap.get("reason", "not enough data")
        else:
            state = FAIL if val > g.max_segment_gap else PASS
            why = (
                f"{gap['metric']}: {gap.get('segment')} {fmt(gap.get('segment_value'))} vs "
                f"overall {fmt(gap.get('overall'))}"
            )
        out.append(
            _descriptive(
                "segment_gap", "fairness", state, val, g.max_segment_gap, why, null_hypothesis=nh
            )
        )
    if g.min_disparity_ratio is not None:
        dr = seg["disparity"]
        val = dr.get("value")
        nh = "lowest / highest positive-decision rate of the segments at least the limit"
        if no_fields:
            state, why = NOT_APPLICABLE, "no segment fields recorded"
        elif val is None:
            state, why = NOT_ENOUGH_DATA, dr.get("reason", "not enough data")
        else:
            state = FAIL if val < g.min_disparity_ratio else PASS
            why = (
                f"{dr['field']}: {dr['lowest']['value']} {fmt(dr['lowest']['rate'])} vs "
                f"{dr['highest']['value']} {fmt(dr['highest']['rate'])}"
            )
        out.append(
            _descriptive(
                "disparity_ratio",
                "fairness",
                state,
                val,
                g.min_disparity_ratio,
                why,
                null_hypothesis=nh,
            )
        )
    return out
