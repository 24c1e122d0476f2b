"""The running state of the gates across the promotion controller's looks of one step (pure):
intervals intersected, always-valid p-values at their running minimum, states re-derived."""

from __future__ import annotations

from typing import Any

from router.analysis import sequential as sq
from router.analysis.gates.decision import decide
from router.analysis.gates.rows import ci_text, fmt
from router.analysis.gates.rules import (
    FAIL,
    INCONCLUSIVE,
    NOT_APPLICABLE,
    PASS,
    interval_state,
    primary_state,
    state_of,
)


def apply_running(
    report: dict[str, Any], prior: dict[str, Any] | None
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """Intersect each always-valid gate's interval with the same gate's intervals at earlier
    looks of the same step, and keep the running minimum of its always-valid p-value (``prior``:
    what this returned last time, or None); re-derive the states and the decision. Returns
    ``(gates, decision, running)``; the caller (the promotion controller) stores ``running`` for
    its next look. The intersection of a confidence sequence is a confidence sequence, and the
    running minimum of an always-valid p-value is one too (both rest on the same event of
    Ville's inequality), so the guarantees are unchanged and the states only tighten."""
    prior = prior or {}
    out: list[dict[str, Any]] = []
    running: dict[str, Any] = {}
    for g in report["gates"]:
        g = dict(g)
        name = g["name"]
        if not g.get("always_valid") or g["state"] not in (PASS, FAIL, INCONCLUSIVE):
            out.append(g)
            continue
        before = prior.get(name) or {}
        ci = g.get("ci")
        b_ci = before.get("ci") or [None, None]
        looks = int(before.get("looks", 0)) + 1
        cur = sq.Running(b_ci[0], b_ci[1], before.get("p_value"), looks - 1)
        lo_now, hi_now = (ci[0], ci[1]) if ci is not None else (None, None)
        cur = cur.update(lo_now, hi_now, g.get("p_value"))
        running[name] = {"ci": [cur.low, cur.high] if ci is not None else None,
                         "p_value": cur.pvalue, "looks": looks}  # fmt: skip
        changed = False
        if ci is not None and [cur.low, cur.high] != list(ci):
            g["ci"] = [cur.low, cur.high]
            changed = True
            thr = g["threshold"]
            if g["kind"] in ("primary", "goal"):
                g["state"] = state_of(primary_state(cur.low, cur.high, float(thr)))
            elif thr is not None and g.get("better") in ("lower", "higher"):
                g["state"] = state_of(
                    interval_state(cur.low, cur.high, float(thr), str(g["better"]))
                )
        if cur.pvalue is not None and cur.pvalue != g.get("p_value"):
            g["p_value"] = cur.pvalue
            changed = True
            srm = report.get("srm") or {}
            if (
                name == "srm"
                and cur.pvalue < float(g["threshold"])
                and (srm.get("max_share_diff") or 0.0) > (srm.get("min_share_diff") or 0.0)
            ):
                g["state"] = FAIL
        if changed:
            g["passed"] = g["state"] in (PASS, NOT_APPLICABLE)
            g["significant"] = g["state"] == FAIL
            g["reason"] += (
                f"; over {looks} looks of this step: "
                + (f"intersected interval {ci_text(cur.low, cur.high)}, " if ci is not None else "")
                + f"smallest always-valid p {fmt(cur.pvalue)}"
            )
        out.append(g)
    return out, decide(out, report), running
