"""Changes since the previous look (``router analyze --compare``): the decision, the gates
whose state moved, and the headline figures metric by metric (pure)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from router.analysis import fmt
from router.analysis.doc import Note, Para, Section, Status, Table

_LEVEL: dict[str, Callable[[Any], str]] = {
    "count": fmt.count,
    "proportion": fmt.pct,
    "pp": lambda v: fmt.pp(v),
    "ms": fmt.ms,
    "p": fmt.pvalue,
    "number": fmt.num,
}
_CHANGE: dict[str, Callable[[Any], str]] = {
    "count": lambda v: fmt.signed(v, 3, lambda x, s: fmt.count(x)),
    "proportion": fmt.pp,
    "pp": fmt.pp,
    "ms": lambda v: fmt.signed(v, 2, lambda x, s: fmt.ms(x, s)),
    "p": lambda v: fmt.signed(v, 2),
    "number": lambda v: fmt.signed(v, 2),
}


def compare_section(r: dict[str, Any]) -> Section | None:
    c = r.get("comparison")
    if not c:
        return None
    prev = c["previous"]
    w = prev.get("window") or {}
    when = fmt.utc_span(w.get("first_record_ts"), w.get("last_record_ts"))
    d = c["decision"]
    head = (
        f"Decision: **{(d['before'] or fmt.NA).upper()} → {(d['after'] or fmt.NA).upper()}**"
        if d["changed"]
        else f"Decision unchanged: **{(d['after'] or fmt.NA).upper()}**"
    )
    blocks: list[Any] = [Para(f"{head}. Previous look: {prev['kind']}, window {when}.")]
    moved = [g for g in c["gates"] if g["changed"]]
    if moved:
        blocks.append(Table(
            ["gate", "before", "now"],
            [[f"`{g['name']}`", Status(g["before"] or "not_applicable"),
              Status(g["after"] or "not_applicable")] for g in moved],
        ))  # fmt: skip
    else:
        blocks.append(Para("No gate changed state."))
    rows = []
    for x in c["figures"]:
        level = _LEVEL.get(x["unit"], fmt.num)
        change = _CHANGE.get(x["unit"], lambda v: fmt.signed(v))
        rows.append([x["section"], x["figure"], level(x["before"]), level(x["after"]),
                     change(x["change"]) if x["change"] is not None else fmt.NA])  # fmt: skip
    if rows:
        blocks.append(Table(["section", "figure", "before", "now", "change"], rows,
                            numeric=[False, False, True, True, True]))  # fmt: skip
    blocks.append(Note("A figure shown as – was not in that look (a controller verdict carries "
                       "only the decision, gates, counts and window)."))  # fmt: skip
    return Section(
        "compare",
        "Changes since the previous look",
        "This report against the one passed to --compare, metric by metric: what moved, and "
        "which gates changed state.",
        blocks,
    )
