"""The analyzer: captured records and outcomes in, a report and a promotion decision out.

``build_report`` analyses in-memory rows; :mod:`router.analysis.run` streams from files or Redis.
The report (and with it scipy) is imported on first use, so processes that only fold records
(the parallel readers) start fast.

Where to start reading, in the order the data flows: :mod:`.run` (the I/O shell; pages read by
:mod:`.reader`, parsed by :mod:`.frames` and :mod:`.ndjson`, outcomes indexed by
:mod:`.outcomes_index`), :mod:`.accumulate` (mergeable aggregates, with its parts :mod:`.pairs`,
:mod:`.segments`, :mod:`.fields`, :mod:`.units` and the sketches of :mod:`.sketches`),
:mod:`.report` (assembles the :mod:`.sections` and :mod:`.data_quality`), :mod:`.gates` (gate
rows and the decision), :mod:`.compare` (``--compare``: what changed since a previous look), then
the renderers: :mod:`.render` (Markdown, and the list of sections), :mod:`.render_html` (with
:mod:`.plots`), both drawing the :mod:`.doc` sections built by :mod:`.views`, every number
through :mod:`.fmt`. The statistics are pure
functions: :mod:`.stats`, :mod:`.proportions`, :mod:`.quantiles`, :mod:`.sample_size`,
:mod:`.measures` (fixed horizon) and :mod:`.sequential` (always valid).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from router.analysis.policy import Policy, load_policy, parse_policy

if TYPE_CHECKING:
    from router.analysis.report import build_report, report_from

__all__ = ["Policy", "build_report", "load_policy", "parse_policy", "report_from"]


def __getattr__(name: str) -> Any:
    if name in ("build_report", "report_from"):
        from router.analysis import report

        return getattr(report, name)
    raise AttributeError(name)
