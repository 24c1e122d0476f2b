"""Render a report as one self-contained HTML page with plots.

The page shows the Markdown sections of :func:`router.analysis.render.sections` and embeds its
plots as base64 PNGs drawn with matplotlib (Agg backend), so it opens offline. Plots: prediction
distributions of both models on the same requests, latency CDFs, uplift over time with the
confidence-sequence band, per-segment bars.
"""

from __future__ import annotations

import base64
import html
import io
from typing import TYPE_CHECKING, Any

from router.analysis.render import sections

if TYPE_CHECKING:
    from router.analysis.accumulate import Accumulator


ACTION_COLOUR = {
    "promote": "#1a7f37",
    "continue": "#0969da",
    "hold": "#9a6700",
    "rollback": "#cf222e",
}


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def plots(r: dict[str, Any], acc: Accumulator | None) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: list[tuple[str, str]] = []
    if acc is not None and acc.paired.sample.rows.size:
        items = acc.paired.sample.items()
        fig, ax = plt.subplots(figsize=(6, 3.2))
        ax.hist(items[:, 0], bins=40, alpha=0.55, label="champion", density=True)
        ax.hist(items[:, 1], bins=40, alpha=0.55, label="challenger", density=True)
        ax.set_xlabel("prediction")
        ax.set_title("Predictions on the same (mirrored) requests")
        ax.legend()
        out.append(("Prediction distributions", _png(fig)))
    if acc is not None and any(h.n for h in acc.latency):
        fig, ax = plt.subplots(figsize=(6, 3.2))
        for v, name in ((0, "champion"), (1, "challenger")):
            x, y = acc.latency[v].cdf_points()
            if x.size:
                ax.step(x, y, where="post", label=f"{name} (served)")
            x, y = acc.paired.latency[v].cdf_points()
            if x.size:
                ax.step(x, y, where="post", linestyle="--", label=f"{name} (mirrored pairs)")
        ax.set_xscale("log")
        ax.set_xlabel("latency (ms)")
        ax.set_ylabel("CDF")
        ax.legend(fontsize=7)
        ax.set_title("Latency CDFs")
        out.append(("Latency", _png(fig)))
    for name, m in r["metrics"].items():
        ser = m.get("series") or []
        if len(ser) < 2:
            continue
        t0 = ser[0]["ts"] or 0.0
        xs = [((p["ts"] or 0.0) - t0) / 60 for p in ser]
        fig, ax = plt.subplots(figsize=(6, 3.2))
        ax.plot(xs, [p["absolute"] for p in ser], marker="o", label="uplift (absolute)")
        lo = [p["sequential_ci"][0] for p in ser]
        hi = [p["sequential_ci"][1] for p in ser]
        if all(v is not None for v in lo + hi):
            ax.fill_between(xs, lo, hi, alpha=0.25, label="confidence sequence")
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.set_xlabel("minutes since first exposure")
        ax.set_title(f"{name}: uplift over time")
        ax.legend(fontsize=7)
        out.append((f"Uplift over time: {name}", _png(fig)))
    for fname, rows in r["segments"]["fields"].items():
        vals = [x["value"] for x in rows][:20]
        if not vals:
            continue
        use_acc = any(x["accuracy"][1] is not None for x in rows)
        key, label = ("accuracy", "accuracy") if use_acc else ("positive_rate", "positive rate")
        ch = [x[key][0] or 0.0 for x in rows][:20]
        cl = [x[key][1] or 0.0 for x in rows][:20]
        fig, ax = plt.subplots(figsize=(6, 3.2))
        idx = list(range(len(vals)))
        ax.bar([i - 0.2 for i in idx], ch, width=0.4, label="champion")
        ax.bar([i + 0.2 for i in idx], cl, width=0.4, label="challenger")
        ax.set_xticks(idx, vals, rotation=30, fontsize=8)
        ax.set_title(f"{label} by {fname}")
        ax.legend(fontsize=7)
        out.append((f"Segments: {fname}", _png(fig)))
    return out


def _md_to_html(lines: list[str]) -> str:
    """Just enough Markdown for our own sections: tables, bullets, bold, code."""
    out: list[str] = []
    table: list[list[str]] = []

    def inline(s: str) -> str:
        s = html.escape(s)
        parts = s.split("**")
        s = "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))
        parts = s.split("`")
        return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))

    def flush() -> None:
        if table:
            head, *body = [r for r in table if not set("".join(r)) <= set("-")]
            out.append(
                "<table><tr>"
                + "".join(f"<th>{inline(c)}</th>" for c in head)
                + "</tr>"
                + "".join(
                    "<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in body
                )
                + "</table>"
            )
            table.clear()

    for raw in lines:
        for ln in raw.split("\n"):
            if ln.startswith("|"):
                table.append([c.strip() for c in ln.strip("|").split("|")])
                continue
            flush()
            if ln.startswith("- "):
                out.append(f"<li>{inline(ln[2:])}</li>")
            elif ln.strip():
                out.append(f"<p>{inline(ln)}</p>")
    flush()
    return "\n".join(out)


def to_html(r: dict[str, Any], acc: Accumulator | None = None) -> str:
    action = r["decision"]["action"]
    colour = ACTION_COLOUR.get(action, "#333")
    body = [
        f"<h1>Shadow report: {html.escape(r['experiment'])}</h1>",
        f"<div class='decision' style='border-color:{colour}'><span style='color:{colour}'>"
        f"{action.upper()}</span></div>",
    ]
    for title, lines in sections(r):
        body.append(f"<h2>{html.escape(title)}</h2>")
        body.append(_md_to_html(lines))
    figs = plots(r, acc)
    if figs:
        body.append("<h2>Plots</h2>")
        for title, uri in figs:
            body.append(
                f"<figure><img src='{uri}' alt='{html.escape(title)}'>"
                f"<figcaption>{html.escape(title)}</figcaption></figure>"
            )
    css = (
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;font-size:13px;margin:.5em 0}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:left}"
        ".decision{border:3px solid;padding:.5em 1em;font-size:1.6em;font-weight:bold;"
        "display:inline-block}figure{display:inline-block;margin:.5em}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>Shadow report "
        f"{html.escape(r['experiment'])}</title><style>{css}</style></head><body>"
        + "\n".join(body)
        + "</body></html>"
    )
