"""The report as a document: sections of plain blocks (paragraphs, bullets, tables, status
badges) that the Markdown/terminal renderer (:mod:`router.analysis.render`) and the HTML page
(:mod:`router.analysis.render_html`) each draw their own way (pure).

A section is built by a function of the report (:mod:`router.analysis.views`); to add one,
write such a function and list it in :data:`router.analysis.render.SECTIONS`. Text in blocks
may use ``**bold**`` and ```code``` and nothing else; numbers in it come from
:mod:`router.analysis.fmt`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

# a gate's (or any check's) state as a word a reader knows, and its tone for colour
STATUS_TEXT = {
    "pass": "PASS",
    "fail": "FAIL",
    "inconclusive": "INCONCLUSIVE",
    "not_enough_data": "NOT ENOUGH DATA",
    "not_evaluable": "NOT EVALUABLE",
    "not_applicable": "N/A",
    "warn": "WARN",
    "ok": "OK",
    "mismatch": "MISMATCH",
}
STATUS_TONE = {
    "pass": "good",
    "ok": "good",
    "fail": "bad",
    "mismatch": "bad",
    "inconclusive": "wait",
    "not_enough_data": "wait",
    "not_evaluable": "wait",
    "warn": "wait",
    "not_applicable": "none",
}
ACTION_TONE = {"promote": "good", "continue": "wait", "hold": "wait", "rollback": "bad"}


@dataclass(frozen=True)
class Status:
    """A state shown as a word (and, in HTML, a colour): never an emoji alone."""

    state: str

    @property
    def text(self) -> str:
        return STATUS_TEXT.get(self.state, self.state.replace("_", " ").upper())

    @property
    def tone(self) -> str:
        return STATUS_TONE.get(self.state, "none")


Cell = str | Status


@dataclass(frozen=True)
class Para:
    text: str


@dataclass(frozen=True)
class Note:
    """A muted aside: how to read what is next to it."""

    text: str


@dataclass(frozen=True)
class Bullets:
    items: Sequence[str]


@dataclass(frozen=True)
class Table:
    """Column heads carry their unit (``p95 (ms)``); ``numeric`` marks columns to right-align."""

    head: Sequence[str]
    rows: Sequence[Sequence[Cell]]
    numeric: Sequence[bool] = ()

    def aligned_right(self, i: int) -> bool:
        return i < len(self.numeric) and self.numeric[i]


@dataclass(frozen=True)
class Headline:
    """The decision block: the action, one sentence each about what it rests on."""

    action: str
    sentences: Sequence[str]


Block = Para | Note | Bullets | Table | Headline


@dataclass
class Section:
    """One section: ``key`` names it (the HTML anchor, the plots that go with it), ``lede`` is
    one line on what it measures and how, next to the numbers."""

    key: str
    title: str
    lede: str
    blocks: list[Block] = field(default_factory=list)


def cell_text(c: Cell) -> str:
    return c.text if isinstance(c, Status) else c
