"""What the analysis rests on: traffic and the sample ratio, data quality, input drift, and the
method notes (pure)."""

from __future__ import annotations

from typing import Any

from router.analysis import fmt
from router.analysis.doc import Bullets, Note, Section, Status, Table


def traffic_section(r: dict[str, Any]) -> Section:
    c, w, s = r["counts"], r["window"], r["srm"]
    pv, units, oc = c["per_variant"], c["units"], c["outcomes"]
    rows = [
        ["records (requests)", fmt.count(pv["champion"]), fmt.count(pv["challenger"]),
         fmt.share_of(pv["challenger"], c["records"])],
        ["units (users)", fmt.count(units["champion"]), fmt.count(units["challenger"]),
         fmt.share_of(units["challenger"], units["champion"] + units["challenger"])],
    ]  # fmt: skip
    blocks: list[Any] = [
        Table(["", "champion", "challenger", "challenger share"], rows,
              numeric=[False, True, True, True]),
    ]
    split = s.get("split")
    req_share = pv["challenger"] / c["records"] if c["records"] else None
    if units["champion"] and units["challenger"]:
        blocks.append(Note(
            "The split is by unit (sticky per user), not by request: requests per arm follow "
            "the users' activity, and a few heavy users (traffic is Zipf-like) make request "
            f"counts uneven ({fmt.count(pv['champion'])} vs {fmt.count(pv['challenger'])}"
            + (f", {fmt.pct(req_share)} to the challenger" if req_share is not None else "")
            + "). That is expected; the sample-ratio check below is on units."
        ))  # fmt: skip
    srm_state = s.get("state", "")
    expected = s.get("expected") or {}
    obs = s.get("observed") or {}
    srm_line = (
        f"Sample ratio: {fmt.count(obs.get('champion'))} vs {fmt.count(obs.get('challenger'))} "
        f"units against {fmt.num(expected.get('champion'))} vs "
        f"{fmt.num(expected.get('challenger'))} expected at a split of "
        f"{fmt.pct(split)} (chi-square p {_p(s.get('p_value'))}, always-valid p "
        f"{_p(s.get('sequential_p_value'))}): {fmt.tidy(s.get('reason', ''))}."
        if split is not None and obs
        else f"Sample ratio: {fmt.tidy(s.get('reason', 'not checked'))} (pass --split to check "
        "the units against the configured split)."
    )
    status = Status(_srm_status(srm_state))
    blocks.append(Table(["check", "status", "detail"],
                        [["sample ratio (units)", status, srm_line]]))  # fmt: skip
    span = fmt.utc_span(w.get("first_record_ts"), w.get("last_record_ts"))
    lines = [
        f"Window: {span}"
        + (f"; **stream trimmed: earliest available {fmt.utc(w['earliest_available'])}**"
           if w.get("trimmed") else ""),
        f"Mirrored pairs: {fmt.count(c['mirrored_pairs'])} "
        f"({fmt.count(c['comparable_pairs'])} comparable); units seen in both arms "
        f"(left out): {fmt.count(units['both_variants'])}.",
        f"Outcomes: {fmt.count(oc['valid'])} valid, {fmt.count(oc['joined'])} joined, "
        f"{fmt.count(oc['unjoined'])} unjoined, {fmt.count(oc['invalid'])} invalid, "
        f"{fmt.count(oc['duplicates'])} duplicates.",
        f"Skipped: {fmt.count(c['duplicates_skipped'])} duplicate records, "
        f"{fmt.count(c['invalid_records'])} invalid.",
    ]
    blocks.append(Bullets(lines))
    return Section(
        "traffic",
        "Traffic and sample ratio",
        "What was analysed: records and units per arm in the window, and whether units were "
        "split as configured (a mismatch means the comparison itself is biased).",
        blocks,
    )


def _srm_status(state: str) -> str:
    return {"ok": "pass", "mismatch": "fail"}.get(state, state or "not_applicable")


def _p(p: Any) -> str:
    text = fmt.pvalue(p)
    return text if text.startswith("<") or text == fmt.NA else f"= {text}"


def data_quality_section(r: dict[str, Any]) -> Section | None:
    dq = r.get("data_quality")
    if dq is None:
        return None
    lines = [f"**Warning:** {fmt.tidy(w)}" for w in dq["warnings"]]
    rec = dq["records"]
    share = rec["invalid_share"]
    lines.append(
        f"Records read: {fmt.count(rec['read'])}; invalid {fmt.count(rec['invalid'])}, reused "
        f"request ids {fmt.count(rec['conflicts']['count'])}"
        + (f" ({fmt.pct(share)}; hold above {fmt.pct(dq['max_invalid_share'])})"
           if share is not None else "")
    )
    if rec["conflicts"]["examples"]:
        ids = ", ".join(f"`{x}`" for x in rec["conflicts"]["examples"])
        lines.append(f"Request ids reused with other contents: {ids}")
    out = rec["outside_window"]
    if out["count"]:
        lines.append(f"Outside the window: {fmt.count(out['count'])} records "
                     f"({fmt.utc_span(out['first_ts'], out['last_ts'])})")  # fmt: skip
    if rec["other_experiments"]:
        names = ", ".join(f"{k} ({fmt.count(n)})" for k, n in rec["other_experiments"].items())
        lines.append(f"Records of other experiments (not analysed): {names}")
    oc = dq["outcomes"]
    if oc["invalid"]:
        why = "; ".join(f"{x['field']}: {x['kind']} ×{fmt.count(x['count'])}"
                        for x in oc["reasons"][:5])  # fmt: skip
        lines.append(f"Invalid outcome rows: {fmt.count(oc['invalid'])} ({why})")
    if oc["other_experiments"]:
        names = ", ".join(f"{k} ({fmt.count(n)})" for k, n in oc["other_experiments"].items())
        lines.append(f"Outcomes of other experiments (not analysed): {names}")
    folded = dq["segments"]["folded_records"]
    if folded:
        what = ", ".join(f"{k}: {fmt.count(n)}" for k, n in folded.items())
        lines.append(f"Segment values beyond the {fmt.count(dq['segments']['max_tracked_values'])}"
                     f" tracked per field, folded into \"other\" (records): {what}")  # fmt: skip
    blocks: list[Any] = [Bullets(lines)]
    if rec["reasons"]:
        blocks.append(Table(
            ["field", "problem", "records", "first seen at"],
            [[f"`{x['field']}`", x["kind"], fmt.count(x["count"]), ", ".join(x["examples"])]
             for x in rec["reasons"]],
            numeric=[False, False, True, False],
        ))  # fmt: skip
    return Section(
        "data_quality",
        "Data quality",
        "What was read and not analysed, and why: invalid records by field, reused request "
        "ids, records outside the window or of other experiments, policy warnings.",
        blocks,
    )


def drift_section(r: dict[str, Any]) -> Section | None:
    dr = r["drift"]
    if not dr.get("fields"):
        return None
    rows = [[f"`{k}`", fmt.num(x["psi"]), x["band"], fmt.num(x["js_distance"])]
            for k, x in dr["fields"].items()]  # fmt: skip
    return Section(
        "drift",
        "Input drift",
        "How far this window's inputs moved from the reference window: PSI < 0.1 stable, "
        "0.1–0.25 moderate shift, ≥ 0.25 major shift; Jensen-Shannon distance beside it.",
        [Table(["field", "PSI", "band", "JS distance"], rows,
               numeric=[False, True, False, True])],
    )


def method_section(r: dict[str, Any]) -> Section:
    meta = r["meta"]
    lines = [
        meta["multiple_testing"],
        meta["sequential"],
        f"alpha {fmt.num(meta['alpha'])}, power {fmt.num(meta['power'])}; prediction kind "
        f"`{meta.get('prediction_kind')}`; report generated {fmt.utc(meta.get('generated_at'))}.",
    ]
    return Section(
        "method",
        "Method notes",
        "How the figures above were computed; each section's first line says the rest.",
        [Bullets(lines)],
    )

