"""Render a report as one self-contained HTML page: the sections of
:func:`router.analysis.render.sections`, each with its plots (:mod:`router.analysis.plots`)
under it, statuses as words on a colour, every table within the page width. No script, no
external resource: it opens offline and prints."""

from __future__ import annotations

import html
import re
from typing import TYPE_CHECKING, Any

from router.analysis.doc import (
    ACTION_TONE,
    Block,
    Bullets,
    Headline,
    Note,
    Para,
    Section,
    Status,
    Table,
)
from router.analysis.plots import Figure, plots
from router.analysis.render import sections

if TYPE_CHECKING:
    from router.analysis.accumulate import Accumulator

# tones: colour-blind-safe (Okabe-Ito), always beside the word
TONE = {"good": "#007a5a", "bad": "#c0392b", "wait": "#9a6700", "none": "#6e7781"}

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1120px;margin:1.5em auto;
 padding:0 16px;color:#1f2328;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{margin-top:1.6em;border-bottom:1px solid #d0d7de;
 padding-bottom:.2em}
nav{font-size:13px;color:#57606a}nav a{margin-right:.8em;color:#0969da;text-decoration:none}
p.lede{color:#57606a;font-style:italic;margin-top:.2em}p.note{color:#57606a;font-size:13px}
.tablewrap{max-width:100%;overflow-x:auto}
table{border-collapse:collapse;font-size:13px;margin:.5em 0;max-width:100%}
td,th{border:1px solid #d0d7de;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f6f8fa}td.num{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}
td.wide{min-width:18em;overflow-wrap:anywhere}
.st{display:inline-block;padding:0 .45em;border-radius:3px;color:#fff;font-weight:600;
 font-size:12px;white-space:nowrap}
.headline{border-left:6px solid;padding:.6em 1em;background:#f6f8fa;margin:.8em 0}
.headline .action{font-size:1.5em;font-weight:700}
figure{margin:.8em 0;max-width:100%}figure img{max-width:100%;height:auto}
figcaption{font-size:13px;color:#57606a}
code{background:#f6f8fa;padding:0 .2em;border-radius:3px}
"""


def inline(text: str) -> str:
    """``**bold**`` and ```code``` of the blocks' text, everything else escaped."""
    s = html.escape(text, quote=False)
    s = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", s)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", s)


def status_html(s: Status) -> str:
    return (f"<span class='st st-{s.tone}' style='background:{TONE[s.tone]}'>"
            f"{html.escape(s.text)}</span>")  # fmt: skip


def _status_words(text: str) -> str:
    """``**PASS**`` in a sentence as a badge."""
    for state in ("pass", "fail", "not_enough_data", "inconclusive", "not_evaluable"):
        text = text.replace(f"<b>{Status(state).text}</b>", status_html(Status(state)))
    return text


def table_html(t: Table) -> str:
    head = "".join(f"<th>{inline(h)}</th>" for h in t.head)
    body = []
    for row in t.rows:
        cells = []
        for i, c in enumerate(row):
            if isinstance(c, Status):
                cells.append(f"<td>{status_html(c)}</td>")
                continue
            cls = " class='num'" if t.aligned_right(i) else (
                " class='wide'" if len(c) > 60 else "")  # fmt: skip
            cells.append(f"<td{cls}>{inline(c)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f"<div class='tablewrap'><table><thead><tr>{head}</tr></thead><tbody>"
            + "".join(body) + "</tbody></table></div>")  # fmt: skip


def block_html(b: Block) -> str:
    if isinstance(b, Headline):
        colour = TONE[ACTION_TONE.get(b.action, "none")]
        first = inline(b.sentences[0]) if b.sentences else ""
        return (f"<div class='headline' style='border-color:{colour}'><span class='action' "
                f"style='color:{colour}'>{html.escape(b.action.upper())}</span> "
                f"<span>{first}</span></div>")  # fmt: skip
    if isinstance(b, Para):
        return f"<p>{_status_words(inline(b.text))}</p>"
    if isinstance(b, Note):
        return f"<p class='note'>{inline(b.text)}</p>"
    if isinstance(b, Bullets):
        return "<ul>" + "".join(f"<li>{_status_words(inline(x))}</li>" for x in b.items) + "</ul>"
    if isinstance(b, Table):
        return table_html(b)
    raise TypeError(f"unknown block {type(b).__name__}")


def figure_html(f: Figure) -> str:
    return (f"<figure><img src='{f.uri}' alt='{html.escape(f.title)}'>"
            f"<figcaption><b>{html.escape(f.title)}.</b> {html.escape(f.caption)}</figcaption>"
            "</figure>")  # fmt: skip


def section_html(s: Section, figures: list[Figure]) -> str:
    parts = [f"<section id='{s.key}'><h2>{html.escape(s.title)}</h2>",
             f"<p class='lede'>{inline(s.lede)}</p>"]  # fmt: skip
    parts += [block_html(b) for b in s.blocks]
    parts += [figure_html(f) for f in figures]
    return "\n".join(parts) + "</section>"


def to_html(r: dict[str, Any], acc: Accumulator | None = None) -> str:
    secs = sections(r)
    figs = plots(r, acc)
    keys = {s.key for s in secs}
    body = [f"<h1>Shadow report: {html.escape(r['experiment'])}</h1>",
            "<nav>" + "".join(f"<a href='#{s.key}'>{html.escape(s.title)}</a>" for s in secs)
            + "</nav>"]  # fmt: skip
    for s in secs:
        body.append(section_html(s, [f for f in figs if f.section == s.key]))
    orphans = [f for f in figs if f.section not in keys]
    if orphans:
        body.append("<section id='plots'><h2>Plots</h2>"
                    + "".join(figure_html(f) for f in orphans) + "</section>")  # fmt: skip
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>Shadow report: {html.escape(r['experiment'])}</title><style>{CSS}</style>"
        "</head><body>" + "\n".join(body) + "</body></html>"
    )
