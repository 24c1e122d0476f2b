"""Sections on power and noise (pure): the goals and guardrails the decision follows from, CUPED
beside the unadjusted uplift (and capping), the sample ratio per segment value, the noise floor
(the champion against itself), and the expected accuracy without labels (CBPE)."""

from __future__ import annotations

from typing import Any

from router.analysis import fmt
from router.analysis.doc import Bullets, Note, Section, Status, Table


def decision_table_section(r: dict[str, Any]) -> Section | None:
    rows_in = r["decision"].get("metrics") or []
    if not rows_in:
        return None
    rows: list[list[str | Status]] = [
        [
            f"**{x['metric']}**",
            x["role"],
            fmt.num(x["threshold"]),
            fmt.bracket(x["ci"]),
            Status(x["state"]),
            x["verdict"],
        ]
        for x in rows_in
    ]
    return Section(
        "decision_table",
        "Goals and guardrails",
        "The policy's metric table the decision follows from: a goal must improve (its "
        "always-valid lower bound past the threshold), a guardrail must not be worse than its "
        "margin (one-sided, always valid); monitors are reported only.",
        [
            Table(
                ["metric", "role", "threshold", "always-valid interval", "status", "verdict"], rows
            )
        ],
    )


def cuped_section(r: dict[str, Any]) -> Section | None:
    lines = []
    for name, m in r["metrics"].items():
        cp = m.get("capping")
        if cp:
            how = cp["method"] + (f" {cp['percentile']}" if cp.get("percentile") else "")
            k = cp["capped_units"]
            lines.append(
                f"**{name}**: capped at {fmt.num(cp['cap'])} ({how}); units capped "
                f"{k['champion']} / {k['challenger']}"
            )
        cu = m.get("cuped")
        if not cu:
            continue
        up, adj = m["uplift"], cu.get("adjusted")
        cov = cu["covariate"]
        src = f"metric `{cov['metric']}`" if cov["source"] == "metric" else "its own history"
        with_cov = sum(cu["units_with_covariate"].values())
        if adj is None:
            lines.append(
                f"**{name}**: not adjusted ({cu['state'].replace('_', ' ')}; covariate: "
                f"{src}, {fmt.count(with_cov)} units with one)"
            )
            continue
        total = sum(m["variants"][v].get("units", m["variants"][v]["n"])
                    for v in ("champion", "challenger"))  # fmt: skip
        without = (
            f", {fmt.count(total - with_cov)} without history (indicator slope "
            f"{fmt.num(cu['theta_has_history'])})"
            if cu.get("theta_has_history") is not None and total > with_cov
            else ""
        )
        lines.append(
            f"**{name}**: unadjusted {fmt.signed(up['absolute'])} {fmt.bracket(up['ci'])} "
            f"(p {fmt.pvalue(up['p_value'])}); CUPED-adjusted {fmt.signed(adj['absolute'])} "
            f"{fmt.bracket(adj['ci'])} (p {fmt.pvalue(adj['p_value'])}, always-valid "
            f"{fmt.bracket(adj['sequential_ci'])}); variance reduction "
            f"{fmt.pct(cu['variance_reduction'])} (theta {fmt.num(cu['theta'])}, r "
            f"{fmt.num(cu['correlation'])}; covariate: {src}, {fmt.count(with_cov)} units"
            f"{without})"
        )
    if not lines:
        return None
    return Section(
        "cuped",
        "CUPED: adjusted beside unadjusted",
        "Regression adjustment by each unit's pre-exposure value (Deng et al. 2013): the same "
        "difference with less variance (about rho squared less); both are shown.",
        [Bullets(lines)],
    )


def srm_segments_section(r: dict[str, Any]) -> Section | None:
    bs = r["srm"].get("by_segment")
    if not bs or bs.get("state") != "ok":
        return None
    rows: list[list[str | Status]] = [
        [
            f"{x['field']}={x['value']}",
            f"{fmt.count(x['observed'][0])} / {fmt.count(x['observed'][1])}",
            f"{fmt.num(x['expected'][0])} / {fmt.num(x['expected'][1])}",
            fmt.pvalue(x["sequential_p_holm"]),
            Status("mismatch" if x["mismatch"] else "ok"),
        ]
        for x in bs["rows"][:20]
    ]
    return Section(
        "srm_segments",
        "Sample ratio by segment",
        "Units per arm within every segment value against the split; always-valid p-values "
        "Holm-adjusted over all values tested, so a mismatch confined to one platform or region "
        "is found and named.",
        [
            Note(fmt.tidy(bs["reason"])),
            Table(
                ["segment", "units champion / challenger", "expected", "Holm-adjusted p", "status"],
                rows,
            ),
        ],
    )


def noise_floor_section(r: dict[str, Any]) -> Section | None:
    nf = r.get("noise_floor")
    if not nf or nf.get("state") != "ok":
        return None
    rows: list[list[str | Status]] = [
        [m, fmt.num(v), fmt.num(nf["challenger"].get(m)), fmt.num(nf["multiple"].get(m))]
        for m, v in nf["measures"].items()
    ]
    lines = [
        f"`{c['path']}` {c['change']}: {fmt.pct(c['challenger_share'])} of challenger pairs vs "
        f"{fmt.pct(c['noise_share'])} of the champion's repeats"
        for c in nf.get("contract", [])[:10]
        if c["beyond_noise"]
    ]
    blocks: list[Any] = [
        Table(
            ["measure", "champion vs itself", "challenger vs champion", "multiple"],
            rows,
            numeric=[False, True, True, True],
        ),
    ]
    if lines:
        blocks.append(Bullets(lines))
    return Section(
        "noise_floor",
        "Noise floor: the champion against itself",
        f"The champion asked twice on {fmt.count(nf['comparable'])} requests: its own "
        "divergence is the noise a challenger's divergence is judged against (multiple = "
        "challenger / champion's own).",
        blocks,
    )


def expected_accuracy_section(r: dict[str, Any]) -> Section | None:
    ea = r.get("expected_accuracy")
    if not ea or ea.get("state") != "ok":
        return None
    rows: list[list[str | Status]] = []
    for name, m in ea["models"].items():
        lab = m.get("labelled") or {}
        rows.append(
            [
                name,
                fmt.pct(m["expected"]),
                fmt.bracket(m["ci"], fmt.pct),
                fmt.count(lab.get("n", 0)),
                fmt.pct(lab.get("realised")),
                fmt.pct(lab.get("expected")),
                Status(
                    {"compared": "ok", "miscalibrated": "mismatch"}.get(
                        m.get("state", ""), "not_applicable"
                    )
                ),
            ]
        )
    return Section(
        "expected_accuracy",
        "Expected accuracy without labels (CBPE)",
        "Each model's accuracy estimated from its own calibrated scores (NannyML's CBPE), shown "
        "until labels arrive; then the realised accuracy beside the expectation for the same "
        "predictions (a mismatch: the scores are not calibrated).",
        [
            Table(
                [
                    "model",
                    "expected",
                    "interval",
                    "labelled",
                    "realised",
                    "expected there",
                    "calibration",
                ],
                rows,
            )
        ],
    )
