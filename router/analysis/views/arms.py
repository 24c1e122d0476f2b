"""The A/B/n sections (pure): every challenger against the champion (the report's ``arms``),
crossover units, and forced requests with the mirror coverage; each only when it has something
to say, so a single-challenger report shows none of them unless it had forced requests,
crossover units or mirror cuts."""

from __future__ import annotations

from typing import Any

from router.analysis import fmt
from router.analysis.doc import Block, Bullets, Note, Para, Section, Status, Table


def challengers_section(r: dict[str, Any]) -> Section | None:
    arms = r.get("arms")
    if not arms:
        return None
    srm = arms["srm"]
    units = ", ".join(f"{k} {fmt.count(v)}" for k, v in srm["observed"].items())
    blocks: list[Block] = [
        Para(
            f"Ranking: {', '.join(arms['ranking'])}; winner: **{arms['winner'] or 'none'}** "
            "(at most one challenger is promoted from one report)."
        ),
        Table(
            ["check", "status", "detail"],
            [
                [
                    "sample ratio across all arms",
                    Status("mismatch" if srm["mismatch"] else srm["state"]),
                    f"units {units}; "
                    f"chi-square p {fmt.pvalue(srm.get('p_value'))}, always-valid p "
                    f"{fmt.pvalue(srm.get('sequential_p_value'))}: {fmt.tidy(srm['reason'])}",
                ]
            ],
        ),
    ]
    rows = []
    for name, cmp_ in arms["comparisons"].items():
        for metric, m in cmp_["metrics"].items():
            rows.append(
                [
                    name,
                    metric,
                    fmt.signed(m.get("absolute")),
                    fmt.bracket(m.get("ci")),
                    fmt.pvalue(m.get("p_value")),
                    fmt.pvalue(m.get("p_value_holm_family")),
                ]
            )
    if rows:
        blocks.append(
            Table(
                ["challenger", "metric", "uplift", "95% CI", "p", "p (Holm, family)"],
                rows,
                numeric=[False, False, True, False, True, True],
            )
        )
    blocks.append(
        Table(
            ["challenger", "decision", "why"],
            [
                [
                    n,
                    Status(
                        {"promote": "pass", "rollback": "fail"}.get(d["action"], "inconclusive")
                    ),
                    fmt.tidy("; ".join(d["reasons"][:3]) or "no reasons"),
                ]
                for n, d in arms["decisions"].items()
            ],
        )
    )
    mt = arms["multiple_testing"]
    blocks.append(
        Note(
            f"{mt['method']} ({fmt.plural(mt['family_size'], 'test')}); each "
            "challenger is its own two-arm analysis of the records served by the "
            "champion or by it, paired where mirrored."
        )
    )
    return Section(
        "challengers",
        "Challengers",
        "every challenger against the champion, Holm across challengers and metrics",
        blocks,
    )


def crossover_section(r: dict[str, Any]) -> Section | None:
    cross = r.get("crossover")
    if not cross or not cross["units"]:
        return None
    by = ", ".join(f"{k}: {fmt.count(v)}" for k, v in cross["by_variants"].items())
    examples = ", ".join(f"`{e['unit']}` ({'+'.join(e['variants'])})" for e in cross["examples"])
    return Section(
        "crossover",
        "Crossover units",
        "units served by more than one variant in the window",
        [
            Para(
                f"{fmt.plural(cross['units'], 'unit')} seen in more than one variant ({by}); they "
                "are left out of the sample-ratio check and every unit-level statistic."
            ),
            Bullets([f"examples: {examples}", f"usual causes: {cross['causes']}"]),
        ],
    )


def forced_and_coverage_section(r: dict[str, Any]) -> Section | None:
    c = r["counts"]
    items: list[str] = []
    forced = c.get("forced")
    if forced and forced["requests"]:
        by = ", ".join(f"{k} {fmt.count(v)}" for k, v in forced["by_variant"].items())
        items.append(
            f"forced requests (QA), left out of every statistic: "
            f"{fmt.count(forced['requests'])} ({by})"
        )
    cov = c.get("mirror_coverage") or {}
    for target, reasons in (cov.get("skipped") or {}).items():
        share = (cov.get("coverage") or {}).get(target)
        items.append(
            f"not mirrored to {target}: "
            + ", ".join(f"{k} {fmt.count(v)}" for k, v in reasons.items())
            + (f" (coverage {fmt.pct(share)})" if share is not None else "")
        )
    if not items:
        return None
    return Section(
        "coverage",
        "Forced requests and mirror coverage",
        "what was kept out of the statistics, and what the mirror did not send",
        [Bullets(items)],
    )
