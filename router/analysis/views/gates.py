"""The gates: each one's state in words, what it checks, what it saw against its limit, and
whether its test stays valid under repeated looks (pure)."""

from __future__ import annotations

from typing import Any

from router.analysis import fmt
from router.analysis.doc import Note, Section, Status, Table
from router.analysis.views.figures import GATE_WHAT, gate_fmt, gate_limit


def gates_section(r: dict[str, Any]) -> Section:
    rows = []
    for g in r["gates"]:
        f = gate_fmt(g, r)
        ci = g.get("ci")
        rows.append(
            [
                f"`{g['name']}`",
                Status(g.get("state", "")),
                GATE_WHAT.get(g["name"], g.get("kind", "")),
                f(g["value"]) if g.get("value") is not None else fmt.NA,
                fmt.bracket(ci, f) if ci else fmt.NA,
                gate_limit(g, r),
                "yes" if g.get("always_valid") else "no",
                fmt.tidy(g.get("reason", "")),
            ]
        )
    return Section(
        "gates",
        "Gates",
        "Each gate tests one promise the challenger must keep; it passes only when its whole "
        "95% interval is on the good side of the limit (descriptive gates: the point estimate).",
        [
            Table(
                ["gate", "status", "checks", "observed", "95% interval", "limit",
                 "always valid", "reason"],
                rows,
                numeric=[False, False, False, True, True, True, False, False],
            ),
            Note(
                "PASS: within the limit. FAIL: the whole interval is past it. INCONCLUSIVE: "
                "the interval still contains the limit. NOT ENOUGH DATA / NOT EVALUABLE: no "
                "test yet (never counts as a pass). N/A: does not apply to this window."
            ),
        ],
    )
