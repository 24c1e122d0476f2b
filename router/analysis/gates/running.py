"""The running state of the gates across the promotion controller's looks of one step (pure):
intervals intersected, always-valid p-values at their running minimum, states re-derived."""

from __future__ import annotations

from typing import Any

from router.analysis import sequential as sq
from router.analysis import stats
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
        if name == "srm_segments" and g["state"] in (PASS, FAIL):
            out.append(_srm_segments(g, report, prior.get(name) or {}, running))
            continue
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


MAX_SEGMENT_VALUES = 1000  # segment values whose running p-value is kept (the smallest)


def _srm_segments(
    g: dict[str, Any], report: dict[str, Any], before: dict[str, Any], running: dict[str, Any]
) -> dict[str, Any]:
    """The per-segment-value SRM gate across looks: each value's always-valid p-value at its
    running minimum (values an earlier look tested stay in the family), Holm applied afresh
    over them, and a mismatch where the adjusted p is below ``srm.alpha`` and this look's
    share deviation of that value is above ``srm.min_share_diff`` (as within one look)."""
    srm = report.get("srm") or {}
    rows = (srm.get("by_segment") or {}).get("rows") or []
    vals: dict[str, float] = {
        str(k): float(v) for k, v in (before.get("values") or {}).items() if v is not None
    }
    dev: dict[str, float] = {}
    for r in rows:
        key = f"{r['field']}={r['value']}"
        dev[key] = float(r.get("max_share_diff") or 0.0)
        p = r.get("sequential_p_value")
        if p is not None:
            vals[key] = min(float(p), vals.get(key, 1.0))
    if len(vals) > MAX_SEGMENT_VALUES:
        vals = dict(sorted(vals.items(), key=lambda kv: kv[1])[:MAX_SEGMENT_VALUES])
    keys = sorted(vals)
    adjusted = stats.holm([vals[k] for k in keys])
    alpha, min_dev = float(g["threshold"]), float(srm.get("min_share_diff") or 0.0)
    mismatched = [k for k, a in zip(keys, adjusted, strict=True)
                  if a is not None and a < alpha and dev.get(k, 0.0) > min_dev]  # fmt: skip
    looks = int(before.get("looks", 0)) + 1
    smallest = min((a for a in adjusted if a is not None), default=None)
    running["srm_segments"] = {"values": vals, "looks": looks, "p_value": smallest}
    if looks == 1 and not before:
        return g  # the first look: nothing earlier to combine
    g["p_value"] = smallest
    g["state"] = FAIL if mismatched else PASS
    g["passed"] = not mismatched
    g["significant"] = bool(mismatched)
    g["reason"] += (
        f"; over {looks} looks of this step (each value's smallest always-valid p, Holm over "
        f"{len(keys)} values): "
        + (f"mismatch in {', '.join(mismatched)}" if mismatched else "none mismatched")
    )
    return g
