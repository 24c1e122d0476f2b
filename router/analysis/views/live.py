"""The live split's sections: outcome metrics (uplift with fixed-horizon and always-valid
intervals, sample size and ETA) and segments with the fairness figures (pure)."""

from __future__ import annotations

from typing import Any

from router.analysis import fmt
from router.analysis.doc import Bullets, Note, Para, Section, Table
from router.analysis.views.figures import is_proportion, metric_fmts


def metrics_section(r: dict[str, Any]) -> Section:
    lede = (
        "Challenger − champion on the live split (different users per arm): Welch's test with "
        "its 95% interval (fixed horizon: valid for one look) and the mSPRT always-valid "
        "interval the decision uses; proportions in percent, differences in percentage points."
    )
    if not r["metrics"]:
        none = Para("No outcomes were joined to the live split in this window.")
        return Section("metrics", "Outcome metrics (live split)", lede, [none])
    pm = r["meta"].get("primary_metric")
    rows = []
    for name, m in r["metrics"].items():
        level, diff = metric_fmts(m)
        up = m["uplift"]
        ch, cl = m["variants"]["champion"], m["variants"]["challenger"]
        per = "per request" if m.get("per") == "request" else "per unit"
        rows.append(
            [
                f"**{name}**" + (" (primary)" if name == pm else ""),
                f"{m['type']}, {per}",
                f"{fmt.count(ch['n'])} / {fmt.count(cl['n'])}",
                f"{level(ch['mean'])} / {level(cl['mean'])}",
                diff(up["absolute"]),
                fmt.bracket(up["ci"], diff),
                fmt.signed(up["relative"], 2, fmt.pct) if up.get("relative") is not None
                else fmt.NA,
                fmt.pvalue(up["p_value"]),
                fmt.pvalue(up.get("p_value_holm")),
                fmt.bracket(up["sequential_ci"], diff),
                fmt.pvalue(up["sequential_p_value"]),
            ]
        )
    plan = []
    for name, m in r["metrics"].items():
        _level, diff = metric_fmts(m)
        need = m.get("sample_size_per_arm")
        if m.get("mde") is None and need is None:
            continue
        target = m.get("target_effect")
        tgt = (fmt.pp(target) if is_proportion(m) else fmt.num(target)) if target else fmt.NA
        eta = m.get("eta_s")
        plan.append(
            [
                f"**{name}**",
                diff(m.get("mde")) if m.get("mde") is not None else fmt.NA,
                tgt,
                fmt.count(need),
                "reached" if eta == 0 else fmt.duration(eta),
            ]
        )
    blocks: list[Any] = [
        Table(
            ["metric", "kind", "n champion / challenger", "mean champion / challenger",
             "Δ", "95% CI", "relative Δ", "p", "p (Holm)", "always-valid 95% CI",
             "always-valid p"],
            rows,
            numeric=[False, False, True, True, True, True, True, True, True, True, True],
        ),
        Note(
            "n is units for per-unit metrics and requests for per-request ones (their variance "
            "is clustered by unit). Holm adjusts the fixed-horizon p-values across metrics."
        ),
    ]
    if plan:
        blocks += [
            Para("Sample size for the target effect (fixed horizon, at the policy's alpha and "
                 "power) and the time to reach it at the current rate of new units:"),
            Table(["metric", "detectable now (MDE)", "target effect", "units per arm needed",
                   "ETA"], plan, numeric=[False, True, True, True, True]),
        ]  # fmt: skip
    return Section("metrics", "Outcome metrics (live split)", lede, blocks)


def segments_section(r: dict[str, Any]) -> Section:
    sg = r["segments"]
    gap, disp = sg.get("gap") or {}, sg.get("disparity") or {}
    lines = []
    if gap.get("value") is not None:
        lines.append(f"Largest gap of a segment to the overall figure: {fmt.num(gap['value'])} "
                     f"({gap.get('metric')}, {gap.get('segment', fmt.NA)}).")  # fmt: skip
    if disp.get("value") is not None:
        lines.append(f"Disparity ratio (lowest / highest positive-decision rate, four-fifths "
                     f"rule at 0.8): {fmt.num(disp['value'])} "
                     f"({disp.get('field', fmt.NA)}).")  # fmt: skip
    blocks: list[Any] = [Bullets(lines)] if lines else []
    _level, pdiff = metric_fmts(r["metrics"].get(r["meta"].get("primary_metric") or ""))
    for fname, rows_ in sg["fields"].items():
        rows = []
        for x in rows_:
            pu = x.get("primary_uplift")
            rows.append(
                [
                    f"`{x['value']}`",
                    f"{fmt.count(x['requests'][0])} / {fmt.count(x['requests'][1])}",
                    fmt.pct(x["error_rate"][1]),
                    f"{fmt.ms(x['latency_p95_ms'][0])} / {fmt.ms(x['latency_p95_ms'][1])}",
                    fmt.pct(x.get("agreement")),
                    f"{fmt.pct(x['positive_rate'][0])} / {fmt.pct(x['positive_rate'][1])}",
                    f"{fmt.pct(x['accuracy'][0])} / {fmt.pct(x['accuracy'][1])}",
                    f"{pdiff(pu['absolute'])} {fmt.bracket(pu['ci'], pdiff)}" if pu else fmt.NA,
                ]
            )
        head = [fname, "requests", "challenger error rate", "p95 latency", "agreement",
                "positive rate", "accuracy", "primary Δ [95% CI]"]  # fmt: skip
        if not any("primary_uplift" in x for x in rows_):  # no live-split outcome per segment
            head, rows = head[:-1], [row[:-1] for row in rows]
        blocks.append(Para(f"By **{fname}** (champion / challenger):"))
        blocks.append(Table(head, rows, numeric=[False] + [True] * (len(head) - 1)))
    if not sg["fields"]:
        blocks.append(Para("No segment fields were captured."))
    return Section(
        "segments",
        "Segments and fairness",
        "Every figure per segment value, to find a group the challenger serves worse; the "
        "fairness gates use the largest gap and the disparity ratio (descriptive, no test).",
        blocks,
    )
