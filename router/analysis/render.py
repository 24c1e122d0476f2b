"""Render a report as Markdown that reads well on GitHub and in a terminal (``router analyze
--format md``), from the sections both renderers share (pure).

:data:`SECTIONS` lists the section builders in reading order: the headline (the decision in
sentences), changes since a previous look, the gates, then the evidence from the live split and
from the mirrored pairs, and what the analysis rests on. Each builder takes the report JSON and
returns a :class:`router.analysis.doc.Section` (or None when it has nothing to say); to add a
section, write one in :mod:`router.analysis.views` and list it here. The HTML page
(:mod:`router.analysis.render_html`) draws the same sections, with plots.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from router.analysis.doc import (
    Block,
    Bullets,
    Headline,
    Note,
    Para,
    Section,
    Status,
    Table,
    cell_text,
)
from router.analysis.views.arms import (
    challengers_section,
    crossover_section,
    forced_and_coverage_section,
)
from router.analysis.views.compare import compare_section
from router.analysis.views.data import (
    data_quality_section,
    drift_section,
    method_section,
    traffic_section,
)
from router.analysis.views.gates import gates_section
from router.analysis.views.headline import headline_section
from router.analysis.views.live import metrics_section, segments_section
from router.analysis.views.paired import (
    divergence_section,
    errors_section,
    latency_section,
    quality_section,
)
from router.analysis.views.power import (
    cuped_section,
    decision_table_section,
    expected_accuracy_section,
    noise_floor_section,
    srm_segments_section,
)

SectionBuilder = Callable[[dict[str, Any]], Section | None]

SECTIONS: list[SectionBuilder] = [
    headline_section,
    compare_section,
    gates_section,
    decision_table_section,
    challengers_section,
    metrics_section,
    cuped_section,
    quality_section,
    expected_accuracy_section,
    latency_section,
    errors_section,
    divergence_section,
    noise_floor_section,
    segments_section,
    drift_section,
    traffic_section,
    srm_segments_section,
    crossover_section,
    forced_and_coverage_section,
    data_quality_section,
    method_section,
]


def sections(r: dict[str, Any]) -> list[Section]:
    """The report's sections in reading order (those with something to say)."""
    return [s for s in (build(r) for build in SECTIONS) if s is not None]


def _escape_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table_md(t: Table) -> list[str]:
    """A pipe table padded to its columns' widths, so it lines up in a terminal too; numeric
    columns right-aligned."""
    cells = [[_escape_cell(h) for h in t.head]] + [
        [_escape_cell(cell_text(c)) for c in row] for row in t.rows
    ]
    widths = [max(len(r[i]) for r in cells if i < len(r)) for i in range(len(t.head))]
    widths = [max(w, 3) for w in widths]

    def line(row: list[str]) -> str:
        parts = []
        for i, w in enumerate(widths):
            c = row[i] if i < len(row) else ""
            parts.append(c.rjust(w) if t.aligned_right(i) and row is not cells[0] else c.ljust(w))
        return "| " + " | ".join(parts) + " |"

    rule = "|" + "|".join(
        ("-" * (w + 1) + ":") if t.aligned_right(i) else "-" * (w + 2)
        for i, w in enumerate(widths)
    ) + "|"  # fmt: skip
    return [line(cells[0]), rule, *(line(r) for r in cells[1:])]


def block_md(b: Block) -> list[str]:
    if isinstance(b, Headline):
        return [f"**{b.action.upper()}**: {b.sentences[0]}" if b.sentences else
                f"**{b.action.upper()}**"]  # fmt: skip
    if isinstance(b, Para):
        return [b.text]
    if isinstance(b, Note):
        return [f"_{b.text}_"]
    if isinstance(b, Bullets):
        return [f"- {x}" for x in b.items]
    if isinstance(b, Table):
        return table_md(b)
    raise TypeError(f"unknown block {type(b).__name__}")


def section_md(s: Section) -> list[str]:
    out = [f"## {s.title}", "", f"_{s.lede}_", ""]
    for b in s.blocks:
        out += [*block_md(b), ""]
    return out


def archive_line(a: dict[str, Any]) -> str:
    """One line on what an archive window held (``report["archive"]``)."""
    bad = a["unreadable_files"]
    text = (f"Archive {a['uri']}: {a['files']} files over {a['hours']} hours, "
            f"{a['hours_without_data']} hours without data")  # fmt: skip
    if a["empty_hour_ranges"]:
        text += " (" + ", ".join(f"{lo} to {hi}" for lo, hi in a["empty_hour_ranges"][:5]) + ")"
    if bad["count"]:
        named = "; ".join(f"{e['path']}: {e['reason']}" for e in bad["examples"][:3])
        text += f"; **{bad['count']} unreadable files skipped** ({named})"
    if a.get("latest_archived") is not None:
        when = datetime.fromtimestamp(a["latest_archived"], UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        text += f"; archived up to {when}"
    if a.get("ends_before_window"):
        text += " (**the archive ends before the window does: is the archiver lagging?**)"
    if a.get("cross_task_duplicates"):
        text += f"; {a['cross_task_duplicates']} request ids folded in two tasks"
    return text + "."


def to_markdown(r: dict[str, Any]) -> str:
    lines = [f"# Shadow report: {r['experiment']}", ""]
    if r.get("archive"):
        lines += [archive_line(r["archive"]), ""]
    for s in sections(r):
        lines += section_md(s)
    return "\n".join(lines).rstrip() + "\n"


__all__ = ["SECTIONS", "Section", "Status", "sections", "to_markdown"]
