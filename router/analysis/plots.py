"""The HTML report's plots: each answers one question, is labelled in words, uses a
colour-blind-safe palette (Okabe & Ito 2008) and comes with a one-line caption saying what to
look for. Drawn with matplotlib's Agg backend into base64 PNGs, so the page opens offline.

Each plot belongs to a section (its ``section`` key, :class:`router.analysis.doc.Section.key`)
and is shown under it: the primary metric's uplift over time with its confidence sequence
(``metrics``), latency CDFs on a log axis (``latency``), both models' predictions on the same
requests (``divergence``), a figure per segment value (``segments``).
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from router.analysis import fmt

if TYPE_CHECKING:
    from router.analysis.accumulate import Accumulator

# Okabe-Ito: distinguishable with the common colour-vision deficiencies
CHAMPION = "#0072B2"  # blue
CHALLENGER = "#E69F00"  # orange
BAND = "#56B4E9"  # sky blue
EXTRA = "#009E73"  # bluish green
GREY = "#666666"


@dataclass(frozen=True)
class Figure:
    section: str
    title: str
    caption: str
    uri: str


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _axes(title: str) -> tuple[Any, Any]:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    ax.set_title(title, fontsize=11)
    ax.grid(True, alpha=0.3)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return fig, ax


def _legend_below(ax: Any, ncol: int = 2) -> None:
    """The legend under the axes, where it hides no data."""
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.24), ncol=ncol,
              frameon=False)  # fmt: skip


def _primary(r: dict[str, Any]) -> str | None:
    """The metric the decision is about: the policy's primary metric, else the first outcome
    metric with a series (never the label metric, which is analysed in quality)."""
    pm = r["meta"].get("primary_metric")
    if pm in r["metrics"]:
        return str(pm)
    label = r["quality"].get("label_metric")
    return next((k for k, m in r["metrics"].items() if k != label and m.get("series")), None)


def uplift_plot(r: dict[str, Any]) -> Figure | None:
    name = _primary(r)
    if name is None:
        return None
    m = r["metrics"][name]
    ser = [p for p in m.get("series") or [] if p.get("ts") is not None]
    if len(ser) < 2:
        return None
    prop = m.get("type") == "proportion"
    scale = 100.0 if prop else 1.0
    t0 = ser[0]["ts"]
    span = ser[-1]["ts"] - t0
    div, unit = (3600.0, "hours") if span > 3 * 3600 else (60.0, "minutes")
    if span < 180:
        div, unit = 1.0, "seconds"
    xs = [(p["ts"] - t0) / div for p in ser]

    def ys(key: str, i: int | None = None) -> list[float | None]:
        out = []
        for p in ser:
            v = p[key] if i is None else (p[key] or [None, None])[i]
            out.append(None if v is None else v * scale)
        return out

    fig, ax = _axes(f"{name}: challenger − champion as the window grows")
    lo, hi = ys("sequential_ci", 0), ys("sequential_ci", 1)
    pts = [(x, a, b) for x, a, b in zip(xs, lo, hi, strict=True) if a is not None and b is not None]
    if pts:
        ax.fill_between([p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts],
                        color=BAND, alpha=0.35, label="95% always-valid interval")  # fmt: skip
    flo, fhi = ys("ci", 0), ys("ci", 1)
    fpts = [(x, a, b) for x, a, b in zip(xs, flo, fhi, strict=True)
            if a is not None and b is not None]  # fmt: skip
    if fpts:
        ax.plot([p[0] for p in fpts], [p[1] for p in fpts], color=GREY, linestyle=":",
                linewidth=1, label="95% fixed-horizon interval (one look only)")  # fmt: skip
        ax.plot([p[0] for p in fpts], [p[2] for p in fpts], color=GREY, linestyle=":",
                linewidth=1)  # fmt: skip
    est = ys("absolute")
    ax.plot(xs, est, color=CHALLENGER, marker="o", markersize=3, label="uplift (estimate)")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xlabel(f"{unit} since the window's first exposure")
    ax.set_ylabel("uplift (percentage points)" if prop else "uplift")
    _legend_below(ax)
    return Figure(
        "metrics",
        f"Uplift over time: {name}",
        f"What to look for: the shaded always-valid band for {name} staying above 0 (the "
        "challenger is better) as the window grows; it may be read at any time.",
        _png(fig),
    )


def _ms_axis(ax: Any) -> None:
    """A log axis with few readable labels: 1, 2, 5 × 10^k in ms, no overlap."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=8))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: fmt.ms(v, 2)))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.tick_params(axis="x", labelsize=8)


def latency_plot(acc: Accumulator | None) -> Figure | None:
    if acc is None or not any(h.n for h in acc.latency):
        return None
    fig, ax = _axes("Latency: share of requests answered within x")
    colours = (CHAMPION, CHALLENGER)
    for v, name in ((0, "champion"), (1, "challenger")):
        x, y = acc.latency[v].cdf_points()
        if x.size:
            ax.step(x, y, where="post", color=colours[v], label=f"{name} (requests it served)")
        x, y = acc.paired.latency[v].cdf_points()
        if x.size:
            ax.step(x, y, where="post", color=colours[v], linestyle="--",
                    label=f"{name} (same mirrored requests)")  # fmt: skip
    _ms_axis(ax)
    ax.axhline(0.95, color=GREY, linewidth=0.6, linestyle=":")
    ax.set_xlabel("latency (log scale)")
    ax.set_ylabel("share of requests")
    _legend_below(ax)
    return Figure(
        "latency",
        "Latency CDFs",
        "What to look for: the challenger's curve to the right of the champion's means slower; "
        "compare them where they cross the dotted p95 line.",
        _png(fig),
    )


def predictions_plot(r: dict[str, Any], acc: Accumulator | None) -> Figure | None:
    if acc is None or not acc.paired.sample.rows.size or r["divergence"].get("kind") != "score":
        return None
    items = acc.paired.sample.items()
    fig, ax = _axes("Scores of both models on the same requests")
    bins = 40
    for col, colour, name in ((0, CHAMPION, "champion"), (1, CHALLENGER, "challenger")):
        ax.hist(items[:, col], bins=bins, density=True, histtype="stepfilled", alpha=0.2,
                color=colour)  # fmt: skip
        ax.hist(items[:, col], bins=bins, density=True, histtype="step", linewidth=1.8,
                color=colour, label=name)  # fmt: skip
    for t in r["divergence"].get("flip_rate") or {}:
        ax.axvline(float(t), color="black", linewidth=0.8, linestyle="--")
    ax.set_xlabel("model score (dashed: decision threshold)")
    ax.set_ylabel("density of requests")
    ax.legend(fontsize=8)
    return Figure(
        "divergence",
        "Prediction distributions",
        "What to look for: how far the two distributions sit apart, and how much mass moves "
        "across the dashed threshold (those requests get another decision).",
        _png(fig),
    )


def segment_plots(r: dict[str, Any]) -> list[Figure]:
    out = []
    for fname, rows in r["segments"]["fields"].items():
        rows = rows[:20]
        if not rows:
            continue
        use_acc = any(x["accuracy"][1] is not None for x in rows)
        key, word = ("accuracy", "accuracy") if use_acc else ("positive_rate", "positive rate")
        vals = [str(x["value"]) for x in rows]
        ch = [100 * (x[key][0] or 0.0) for x in rows]
        cl = [100 * (x[key][1] or 0.0) for x in rows]
        fig, ax = _axes(f"{word.capitalize()} of each model by {fname}")
        idx = list(range(len(vals)))
        ax.bar([i - 0.2 for i in idx], ch, width=0.4, color=CHAMPION, label="champion")
        ax.bar([i + 0.2 for i in idx], cl, width=0.4, color=CHALLENGER, label="challenger")
        ax.set_xticks(idx, vals, rotation=30 if len(vals) > 6 else 0, fontsize=8)
        ax.set_xlabel(fname)
        ax.set_ylabel(f"{word} (%)")
        _legend_below(ax)
        out.append(Figure(
            "segments",
            f"Segments: {fname}",
            f"What to look for: a {fname} where the challenger's bar falls below the "
            f"champion's while it is above elsewhere: a group it serves worse.",
            _png(fig),
        ))  # fmt: skip
    return out


def plots(r: dict[str, Any], acc: Accumulator | None) -> list[Figure]:
    """Every plot of the report, each tagged with the section it belongs under."""
    import matplotlib

    matplotlib.use("Agg")
    out = [uplift_plot(r), latency_plot(acc), predictions_plot(r, acc)]
    return [x for x in out if x is not None] + segment_plots(r)
