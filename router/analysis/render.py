"""Render a report as Markdown: its sections as (title, Markdown lines), shared with the HTML page
(:mod:`router.analysis.render_html`), and the Markdown page itself.
"""

from __future__ import annotations

from typing import Any


def _n(x: Any, nd: int = 4) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return f"{x:.{nd}g}"
    return str(x)


def _ci(ci: list[Any] | None) -> str:
    if not ci or ci[0] is None:
        return "–"
    return f"[{_n(ci[0])}, {_n(ci[1])}]"


_STATE_MARK = {"pass": "✅", "fail": "❌", "inconclusive": "⏳", "not_enough_data": "⏳",
               "not_evaluable": "⚠️", "not_applicable": "–", "warn": "⚠️"}  # fmt: skip


def _table(head: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += [
        "| " + " | ".join(_n(c) if not isinstance(c, str) else c for c in r) + " |" for r in rows
    ]
    return out


def sections(r: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """The report as (title, markdown lines) sections; shared by Markdown and HTML."""
    out: list[tuple[str, list[str]]] = []
    d = r["decision"]
    out.append(("Decision", [f"**{d['action'].upper()}**", ""] + [f"- {x}" for x in d["reasons"]]))
    out.append(
        (
            "Gates",
            _table(
                ["gate", "state", "value", "threshold", "reason", "test"],
                [
                    [
                        g["name"],
                        _STATE_MARK.get(g.get("state", ""), "") + " " + g.get("state", ""),
                        g["value"],
                        g["threshold"],
                        g["reason"],
                        ("always valid; " if g.get("always_valid") else "")
                        + str(g.get("test", "")),
                    ]
                    for g in r["gates"]
                ],
            ),
        )
    )
    c, w = r["counts"], r["window"]
    lines = [
        f"- records: {c['records']} (champion {c['per_variant']['champion']}, challenger "
        f"{c['per_variant']['challenger']}); mirrored pairs {c['mirrored_pairs']} "
        f"({c['comparable_pairs']} comparable)",
        f"- units: champion {c['units']['champion']}, challenger {c['units']['challenger']}, "
        f"in both {c['units']['both_variants']}",
        f"- outcomes: {c['outcomes']['valid']} valid, {c['outcomes']['joined']} joined, "
        f"{c['outcomes']['unjoined']} unjoined, {c['outcomes']['invalid']} invalid, "
        f"{c['outcomes']['duplicates']} duplicates",
        f"- skipped: {c['duplicates_skipped']} duplicate records, {c['invalid_records']} invalid",
        f"- window: {_n(w['first_record_ts'], 12)} .. {_n(w['last_record_ts'], 12)} "
        f"({_n(w['duration_s'])} s)"
        + (
            f" — **stream trimmed: earliest available {_n(w['earliest_available'], 12)}**"
            if w["trimmed"]
            else ""
        ),
    ]
    out.append(("Counts", lines))
    if "data_quality" in r:
        out.append(("Data quality", data_quality_lines(r["data_quality"])))
    s = r["srm"]
    out.append(
        (
            "Sample ratio",
            [
                f"- {s['state']}: {s['reason']}; observed {s['observed']}, "
                f"split {_n(s['split'])}, statistic {_n(s['statistic'])}, "
                f"p = {_n(s['p_value'])}, always-valid p = {_n(s.get('sequential_p_value'))} "
                f"(alert when the always-valid p < {s['alpha']} and a share deviates by "
                f"> {s['min_share_diff']})"
            ],
        )
    )
    lat = r["latency"]
    rows = []
    for v, d_ in lat["per_variant"].items():
        rows.append([v + " (served)", d_["n"], d_["p50"], d_["p95"], _ci(d_["p95_ci"]), d_["p99"]])
    q = lat["paired"]["quantiles"]
    rows.append(
        [
            "paired Δ (same requests)",
            lat["paired"]["n"],
            q["p50"]["delta_ms"],
            q["p95"]["delta_ms"],
            f"[{_n(q['p95']['delta_lower_ms'])}, {_n(q['p95']['delta_upper_ms'])}]",
            q["p99"]["delta_ms"],
        ]
    )
    out.append(
        (
            "Latency (ms)",
            [
                *_table(["", "n", "p50", "p95", "p95 CI", "p99"], rows),
                "",
                "A null side of an interval: not enough latencies for that order statistic "
                "(p95 needs 72, p99 368).",
                f"Mean paired difference {_n(lat['paired']['mean_diff_ms'])} ms "
                f"{_ci(lat['paired']['mean_diff_ci'])} (p = {_n(lat['paired']['p_value'])}).",
            ],
        )
    )
    e = r["errors"]
    rows = [[v, x["n"], x["errors"], x["rate"], _ci(x["ci"])] for v, x in e["per_variant"].items()]
    p = e["paired"]
    extra = []
    if p.get("delta") is not None:
        extra = [
            "",
            f"Paired (mirrored): challenger − champion error rate {_n(p['delta'])} "
            f"{_ci(p['ci'])}, score-test p = {_n(p['p_value'])} (McNemar "
            f"p = {_n(p['mcnemar']['p_value'])}, {p['mcnemar']['method']}).",
        ]
    out.append(("Errors", _table(["variant", "n", "errors", "rate", "95% CI"], rows) + extra))
    dv = r["divergence"]
    keys = [
        k
        for k in (
            "n",
            "mean_abs_diff",
            "rmse",
            "pearson",
            "spearman",
            "psi",
            "psi_band",
            "js_distance",
            "wasserstein_normalised",
            "agreement",
            "cohen_kappa",
            "argmax_agreement",
            "mean_js_distance",
        )
        if k in dv
    ]
    lines = [f"- {k}: {_n(dv[k])}" for k in keys]
    if "ks" in dv:
        lines.append(f"- KS: D = {_n(dv['ks']['statistic'])}, p = {_n(dv['ks']['p_value'])}")
    if "flip_rate" in dv:
        lines.append(f"- decision flip rate: {dv['flip_rate']}")
    for pth in dv["contract"]["paths"][:10]:
        lines.append(f"- contract: `{pth['path']}` {pth['change']} in {pth['share']:.2%} of pairs")
    out.append((f"Divergence ({dv['kind']}, mirrored pairs)", lines or ["- no comparable pairs"]))
    qu = r["quality"]
    if qu.get("state") == "ok":
        m = qu["models"]
        names = sorted(set(m["champion"]) | set(m["challenger"]))
        lines = _table(
            ["metric", "champion", "challenger"],
            [[k, m["champion"].get(k), m["challenger"].get(k)] for k in names],
        )
        for k, t in qu["tests"].items():
            lines.append(
                f"- {k}: Δ {_n(t.get('delta'))} {_ci(t.get('ci'))} "
                f"p = {_n(t.get('p_value'))} ({t.get('method')})"
            )
        out.append((f"Quality on labelled pairs (n = {qu['n']})", lines))
    else:
        out.append(
            ("Quality on labelled pairs", [f"- no labels joined (metric `{qu['label_metric']}`)"])
        )
    rows = []
    for name, mt in r["metrics"].items():
        up = mt["uplift"]
        rows.append(
            [
                name,
                mt["type"],
                mt["variants"]["champion"]["n"],
                mt["variants"]["champion"]["mean"],
                mt["variants"]["challenger"]["n"],
                mt["variants"]["challenger"]["mean"],
                up["absolute"],
                _ci(up["ci"]),
                up["relative"],
                up["p_value"],
                up["p_value_holm"],
                up["sequential_p_value"],
                _ci(up["sequential_ci"]),
                mt["mde"],
                mt["sample_size_per_arm"],
                mt["eta_s"],
            ]
        )
    out.append(
        (
            "Outcome metrics (live split)",
            _table(
                [
                    "metric",
                    "type",
                    "n ch",
                    "mean ch",
                    "n cl",
                    "mean cl",
                    "Δ",
                    "95% CI",
                    "rel.",
                    "p",
                    "p Holm",
                    "seq. p",
                    "seq. CI",
                    "MDE",
                    "n/arm",
                    "ETA s",
                ],
                rows,
            )
            if rows
            else ["- no outcomes"],
        )
    )
    sg = r["segments"]
    lines = [
        f"- largest gap: {_n(sg['gap'].get('value'))} ({sg['gap'].get('metric')}, "
        f"{sg['gap'].get('segment', '–')})",
        f"- disparity ratio: {_n(sg['disparity'].get('value'))} "
        f"({sg['disparity'].get('field', '–')})",
    ]
    for fname, rows_ in sg["fields"].items():
        lines.append("")
        lines += _table(
            [
                fname,
                "requests ch/cl",
                "error rate cl",
                "p95 ms ch/cl",
                "agreement",
                "positive rate ch/cl",
                "accuracy ch/cl",
                "primary Δ [CI]",
            ],
            [
                [
                    x["value"],
                    f"{x['requests'][0]}/{x['requests'][1]}",
                    x["error_rate"][1],
                    f"{_n(x['latency_p95_ms'][0])}/{_n(x['latency_p95_ms'][1])}",
                    x["agreement"],
                    f"{_n(x['positive_rate'][0])}/{_n(x['positive_rate'][1])}",
                    f"{_n(x['accuracy'][0])}/{_n(x['accuracy'][1])}",
                    f"{_n(x['primary_uplift']['absolute'])} {_ci(x['primary_uplift']['ci'])}"
                    if "primary_uplift" in x
                    else "–",
                ]
                for x in rows_
            ],
        )
    out.append(("Segments and fairness", lines))
    dr = r["drift"]
    if dr.get("fields"):
        out.append(
            (
                "Input drift",
                [
                    *_table(
                        ["field", "PSI", "band", "JS"],
                        [
                            [k, x["psi"], x["band"], x["js_distance"]]
                            for k, x in dr["fields"].items()
                        ],
                    ),
                    "",
                    "PSI < 0.1 stable, 0.1–0.25 moderate shift, ≥ 0.25 major shift.",
                ],
            )
        )
    out += abn_sections(r)
    meta = r["meta"]
    out.append(
        (
            "Method notes",
            [
                f"- {meta['multiple_testing']}",
                f"- {meta['sequential']}",
                f"- alpha {meta['alpha']}, power {meta['power']}",
            ],
        )
    )
    return out


def abn_sections(r: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """The A/B/n parts: every challenger against the champion (``arms``), crossover units,
    forced requests and mirror coverage (each only when the report has something to say)."""
    out: list[tuple[str, list[str]]] = []
    arms = r.get("arms")
    if arms:
        srm = arms["srm"]
        lines = [
            f"Ranking: {', '.join(arms['ranking'])}; winner: **{arms['winner'] or 'none'}**.",
            f"SRM across all arms: {srm['state']} (p {_n(srm.get('p_value'))}, always-valid p "
            f"{_n(srm.get('sequential_p_value'))}){' — **MISMATCH**' if srm['mismatch'] else ''}",
            "",
        ]
        rows = []
        for name, cmp_ in arms["comparisons"].items():
            for metric, m in cmp_["metrics"].items():
                rows.append([name, metric, m.get("absolute"), _ci(m.get("ci")),
                             m.get("p_value"), m.get("p_value_holm_family")])  # fmt: skip
        lines += _table(["challenger", "metric", "uplift", "CI", "p", "p (Holm, family)"], rows)
        lines += [""] + [
            f"- {n}: **{d['action']}** — {'; '.join(d['reasons'][:3]) or 'no reasons'}"
            for n, d in arms["decisions"].items()
        ]
        lines += ["", f"{arms['multiple_testing']['method']} "
                  f"({arms['multiple_testing']['family_size']} tests)."]  # fmt: skip
        out.append(("Challengers", lines))
    cross = r.get("crossover")
    if cross and cross["units"]:
        lines = [f"{cross['units']} units were served by more than one variant "
                 f"({', '.join(f'{k}: {v}' for k, v in cross['by_variants'].items())}); they are "
                 "left out of the SRM check and the unit-level statistics. Examples: "
                 + ", ".join(f"{e['unit']} ({'+'.join(e['variants'])})"
                             for e in cross["examples"])]  # fmt: skip
        out.append(("Crossover units", lines))
    c = r["counts"]
    extra = []
    forced = c.get("forced")
    if forced and forced["requests"]:
        by = ", ".join(f"{k} {v}" for k, v in forced["by_variant"].items())
        extra.append(f"- forced requests (QA, left out of every statistic): {forced['requests']} "
                     f"({by})")  # fmt: skip
    cov = c.get("mirror_coverage")
    if cov and cov.get("skipped"):
        for target, reasons in cov["skipped"].items():
            share = (cov.get("coverage") or {}).get(target)
            extra.append(f"- not mirrored to {target}: "
                         + ", ".join(f"{k} {v}" for k, v in reasons.items())
                         + (f" (coverage {_n(share)})" if share is not None else ""))  # fmt: skip
    if extra:
        out.append(("Forced requests and mirror coverage", extra))
    return out


def data_quality_lines(dq: dict[str, Any]) -> list[str]:
    """The data-quality section: policy warnings, then what was read and not analysed."""
    lines = [f"- ⚠️ {w}" for w in dq["warnings"]]
    rec = dq["records"]
    share = rec["invalid_share"]
    lines.append(
        f"- records read: {rec['read']}; invalid {rec['invalid']}, reused request ids "
        f"{rec['conflicts']['count']}"
        + (f" ({share:.2%}; hold above {dq['max_invalid_share']:.2%})" if share is not None else "")
    )
    if rec["reasons"]:
        lines += ["", *_table(
            ["field", "problem", "records", "first seen at"],
            [[x["field"], x["kind"], x["count"], ", ".join(x["examples"])]
             for x in rec["reasons"]],
        ), ""]  # fmt: skip
    if rec["conflicts"]["examples"]:
        ids = ", ".join(f"`{x}`" for x in rec["conflicts"]["examples"])
        lines.append(f"- request ids reused with other contents: {ids}")
    out = rec["outside_window"]
    if out["count"]:
        lines.append(f"- outside the window: {out['count']} records "
                     f"(ts {_n(out['first_ts'], 12)} .. {_n(out['last_ts'], 12)})")  # fmt: skip
    if rec["other_experiments"]:
        names = ", ".join(f"{k} ({n})" for k, n in rec["other_experiments"].items())
        lines.append(f"- records of other experiments (not analysed): {names}")
    oc = dq["outcomes"]
    if oc["invalid"]:
        why = "; ".join(f"{x['field']}: {x['kind']} ×{x['count']}" for x in oc["reasons"][:5])
        lines.append(f"- invalid outcome rows: {oc['invalid']} ({why})")
    if oc["other_experiments"]:
        names = ", ".join(f"{k} ({n})" for k, n in oc["other_experiments"].items())
        lines.append(f"- outcomes of other experiments (not analysed): {names}")
    folded = dq["segments"]["folded_records"]
    if folded:
        what = ", ".join(f"{k}: {n}" for k, n in folded.items())
        lines.append(f"- segment values beyond the {dq['segments']['max_tracked_values']} "
                     f"tracked per field, folded into \"other\" (records): {what}")  # fmt: skip
    return lines


def to_markdown(r: dict[str, Any]) -> str:
    lines = [f"# Shadow report: {r['experiment']}", ""]
    for title, body in sections(r):
        lines += [f"## {title}", "", *body, ""]
    return "\n".join(lines)
