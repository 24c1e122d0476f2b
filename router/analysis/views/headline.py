"""The headline: the decision, then one sentence per goal metric and guardrail in plain words with
its interval and the kind of evidence (live split or mirrored pairs), the window in UTC with its
duration, and what would change the decision (pure)."""

from __future__ import annotations

from typing import Any

from router.analysis import fmt
from router.analysis.doc import Bullets, Headline, Note, Section
from router.analysis.views.figures import gate_fmt, gate_limit, metric_fmts

ACTION_WORDS = {
    "promote": "promote the challenger",
    "continue": "keep collecting evidence",
    "hold": "hold for a human",
    "rollback": "roll the challenger back",
}
WAITING = ("inconclusive", "not_enough_data", "not_evaluable")


def _gate(r: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((g for g in r["gates"] if g["name"] == name), None)


def _verdict(g: dict[str, Any] | None, r: dict[str, Any]) -> str:
    """`` (limit ≤ +50 ms: PASS)``: the gate's limit and state, or nothing without a gate."""
    if g is None:
        return ""
    state = g["state"].replace("_", " ").upper()
    return f" (limit {gate_limit(g, r)}: **{state}**)"


def metric_sentence(r: dict[str, Any], name: str, primary: bool) -> str:
    """``conversion (primary goal, live split): challenger 28.2% vs champion 25.3%, +2.9 pp
    (+11% relative); 95% always-valid interval +0.88 to +4.9 pp; 725 vs 736 users.``"""
    m = r["metrics"][name]
    level, diff = metric_fmts(m)
    ch, cl = m["variants"]["champion"], m["variants"]["challenger"]
    units = [x.get("units", x["n"]) for x in (ch, cl)]
    # the role the policy's metric table gives it (goal, guardrail), else monitored only
    roles = {x["metric"]: x["role"] for x in r["decision"].get("metrics") or []}
    role = "primary goal" if primary else roles.get(name, "monitored metric")
    head = f"**{name}** ({role}, live split): "
    up = m["uplift"]
    if up.get("absolute") is None or ch.get("mean") is None or cl.get("mean") is None:
        g = _gate(r, "primary_metric") if primary else None
        why = fmt.tidy(g["reason"]) if g else up.get("state", "no estimate").replace("_", " ")
        return head + f"no estimate yet ({why})."
    rel = f" ({fmt.signed(up['relative'], 2, fmt.pct)} relative)" if up.get("relative") else ""
    seq = up.get("sequential_ci") or [None, None]
    if seq[0] is not None:
        ci = f"95% always-valid interval {fmt.interval(seq, diff)}"
    else:
        ci = f"95% interval {fmt.interval(up.get('ci'), diff)} (fixed horizon)"
    verdict = _verdict(_gate(r, "primary_metric" if primary else f"metric_{name}"), r)
    return (
        head + f"challenger {level(cl['mean'])} vs champion {level(ch['mean'])}, "
        f"{diff(up['absolute'])}{rel}; {ci}; {fmt.count(units[1])} vs {fmt.count(units[0])} "
        f"units{verdict}."
    )


def quality_sentence(r: dict[str, Any]) -> str | None:
    q = r["quality"]
    if q.get("state") != "ok":
        return None
    models = q["models"]
    g = _gate(r, "accuracy_drop")
    t = q["tests"].get("accuracy")
    if "accuracy" in models["champion"] and t is not None:
        a0, a1 = models["champion"]["accuracy"], models["challenger"]["accuracy"]
        ci = g["ci"] if g and g.get("ci") else t.get("ci")
        kind = "always-valid interval" if g and g.get("ci") else "interval"
        return (
            f"**accuracy** (guardrail, mirrored pairs: both models on the same "
            f"{fmt.count(q['n'])} labelled requests): challenger {fmt.pct(a1)} vs champion "
            f"{fmt.pct(a0)}, {fmt.pp(a1 - a0)}; 95% {kind} {fmt.interval(ci, fmt.pp)}"
            f"{_verdict(g, r)}."
        )
    g = _gate(r, "rmse_increase")
    if "rmse" in models["champion"]:
        return (
            f"**RMSE** (guardrail, mirrored pairs: the same {fmt.count(q['n'])} labelled "
            f"requests): challenger {fmt.num(models['challenger']['rmse'])} vs champion "
            f"{fmt.num(models['champion']['rmse'])}{_verdict(g, r)}."
        )
    return None


def latency_sentence(r: dict[str, Any]) -> str | None:
    g = _gate(r, "latency_regression")
    lat = r["latency"]
    q = lat["paired"]["quantiles"]["p95"]
    if lat["paired"].get("n") and q.get("delta_ms") is not None:
        where = f"mirrored pairs: the same {fmt.count(lat['paired']['n'])} requests"
        c0, c1, d = q["champion"], q["challenger"], q["delta_ms"]
    else:
        pv = lat["per_variant"]
        if pv["challenger"].get("p95") is None or pv["champion"].get("p95") is None:
            return None
        where = "live split"
        c0, c1 = pv["champion"]["p95"], pv["challenger"]["p95"]
        d = c1 - c0
    ci = ""
    if g is not None and g.get("ci") and g["ci"][0] is not None:
        f = gate_fmt(g, r)
        ci = f"; 95% always-valid interval {fmt.interval(g['ci'], f)}"
    return (
        f"**latency p95** (guardrail, {where}): challenger {fmt.ms(c1)} vs champion "
        f"{fmt.ms(c0)}, {fmt.signed(d, 2, lambda x, s: fmt.ms(x, s))}{ci}{_verdict(g, r)}."
    )


def errors_sentence(r: dict[str, Any]) -> str | None:
    g = _gate(r, "error_rate_delta")
    e = r["errors"]
    p = e["paired"]
    if p.get("delta") is not None:
        where = f"mirrored pairs: the same {fmt.count(p['n'])} requests"
        r0, r1 = p["champion_rate"], p["challenger_rate"]
    else:
        pv = e["per_variant"]
        if not pv["challenger"]["n"] or not pv["champion"]["n"]:
            return None
        where = "live split"
        r0, r1 = pv["champion"]["rate"], pv["challenger"]["rate"]
    ci = ""
    if g is not None and g.get("ci") and g["ci"][0] is not None:
        ci = f"; 95% always-valid interval {fmt.interval(g['ci'], fmt.pp)}"
    return (
        f"**error rate** (guardrail, {where}): challenger {fmt.pct(r1)} vs champion "
        f"{fmt.pct(r0)}, {fmt.pp(r1 - r0)}{ci}{_verdict(g, r)}."
    )


def gates_sentence(r: dict[str, Any]) -> str:
    gates = r["gates"]
    by: dict[str, list[str]] = {}
    for g in gates:
        by.setdefault(g["state"], []).append(g["name"])
    n_pass = len(by.get("pass", []))
    parts = [f"{n_pass} of {len(gates)} gates pass"]
    for state in ("fail", *WAITING, "warn", "not_applicable"):
        if state in by:
            word = state.replace("_", " ").upper() if state != "not_applicable" else "N/A"
            parts.append(f"{len(by[state])} {word} ({', '.join(by[state])})")
    return "; ".join(parts) + "."


def change_sentence(r: dict[str, Any]) -> str:
    """What would change the decision."""
    action = r["decision"]["action"]
    gates = r["gates"]
    if action == "promote":
        return (
            "What would change it: nothing is pending. The intervals are always valid, so "
            "later looks may be trusted; a guardrail whose interval moves wholly past its limit "
            "would roll back."
        )
    if action in ("hold", "rollback"):
        failed = [g for g in gates if g["state"] == "fail"]
        names = ", ".join(g["name"] for g in failed) or "the data"
        if action == "rollback":
            return (
                f"What would change it: nothing in this step: {names} failed with an "
                "always-valid interval wholly past its limit; a fixed challenger starts anew."
            )
        return (
            f"What would change it: a human's look at {names} (`router canary resume` after "
            "a fix), or these gates passing at a later look."
        )
    waiting = [g for g in gates if g["state"] in WAITING]
    text = "What would change it: " + (
        "; ".join(f"{g['name']} {g['state'].replace('_', ' ')}" for g in waiting) or "more data"
    )
    prim = _gate(r, "primary_metric")
    pm_name = r["meta"].get("primary_metric")
    m = r["metrics"].get(pm_name or "")
    if prim is not None and prim.get("eta_s") is not None and m is not None:
        need = m.get("sample_size_per_arm")
        text += (
            f". ETA to significance for {pm_name}: about {fmt.duration(prim['eta_s'])} at the "
            f"current rate of new units, to reach {fmt.count(need)} units per arm (fixed "
            "horizon; the always-valid interval needs roughly 1.5–2.5× as many)"
        )
    elif prim is not None and prim["state"] in WAITING:
        text += f". {pm_name}: no ETA yet (needs at least 2 units with outcomes in each arm)"
    return text + "."


def evidence_sentence(r: dict[str, Any]) -> str:
    c, w = r["counts"], r["window"]
    units = c["units"]
    live = units["champion"] and units["challenger"]
    kinds = []
    if live:
        split = r["srm"].get("split")
        share = f" ({fmt.pct(split)} to the challenger)" if split is not None else ""
        kinds.append(
            f"live split by unit{share}: {fmt.count(units['champion'])} vs "
            f"{fmt.count(units['challenger'])} units"
        )
    if c["mirrored_pairs"]:
        kinds.append(f"{fmt.count(c['mirrored_pairs'])} mirrored pairs (both models on the "
                     "same request)")  # fmt: skip
    kind = "; ".join(kinds) or "no comparable evidence"
    span = fmt.utc_span(w.get("first_record_ts"), w.get("last_record_ts"))
    if span == fmt.NA:
        span = "no records in it"
    trimmed = " (stream trimmed: earlier records are gone)" if w.get("trimmed") else ""
    return f"Evidence: {kind}. Window: {span}{trimmed}; {fmt.count(c['records'])} records."


def headline_section(r: dict[str, Any]) -> Section:
    d = r["decision"]
    sentences: list[str] = []
    pm = r["meta"].get("primary_metric")
    label = r["quality"].get("label_metric")
    if pm and pm in r["metrics"]:
        sentences.append(metric_sentence(r, pm, primary=True))
    elif pm:
        sentences.append(f"**{pm}** (primary goal, live split): no outcomes of this metric in "
                         "the window.")  # fmt: skip
    others = [k for k in r["metrics"] if k not in (pm, label)]
    sentences += [metric_sentence(r, k, primary=False) for k in others[:4]]
    if len(others) > 4:
        sentences.append(f"{len(others) - 4} more metrics in the outcome-metrics table.")
    for s in (quality_sentence(r), latency_sentence(r), errors_sentence(r)):
        if s:
            sentences.append(s)
    reasons = [fmt.tidy(x) for x in d["reasons"]]
    blocks: list[Any] = [
        Headline(d["action"], [ACTION_WORDS.get(d["action"], d["action"]) + ": " +
                               (reasons[0] if reasons else "")]),
        *([Bullets(sentences)] if sentences else []),
        Bullets([evidence_sentence(r), "Gates: " + gates_sentence(r), change_sentence(r)]),
    ]
    if len(reasons) > 1:
        blocks.append(Note("Reasons: " + " · ".join(reasons[1:])))
    return Section(
        "decision",
        "Decision",
        "The decision and what it rests on; every interval is 95% and, where it says so, "
        "always valid (it holds however often the report is looked at).",
        blocks,
    )
