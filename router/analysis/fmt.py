"""Numbers and times as a reader wants them (pure; shared by every renderer).

One rule set for the Markdown, terminal and HTML reports, and for anyone else who prints a
report's figures: 3 significant digits at most (2 for intervals' ends when asked), thousands
separators for counts, proportions as percent and their differences as percentage points,
p-values as ``< 0.001`` below a thousandth, durations in words (``2 h 5 min``), instants in UTC
(``2026-11-30 15:16:01 UTC``). ``None`` (a figure that could not be computed) is an en dash.
Nothing here prints a Python repr, a unix timestamp or a float with more than 4 significant
digits; the tests check the rendered reports for all three.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

NA = "–"  # a figure that could not be computed (en dash)
MINUS = "−"  # U+2212: a minus sign that lines up with the plus


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def num(x: Any, sig: int = 3) -> str:
    """A number with at most ``sig`` significant digits, no exponent between 1e-4 and 1e9
    (``0.00356``, ``18,600``, ``1.2``); integers as counts (``5,821``)."""
    if x is None:
        return NA
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return count(x)
    if not _finite(x):
        return NA if x != x else ("∞" if x > 0 else MINUS + "∞")
    if x == 0:
        return "0"
    mag = math.floor(math.log10(abs(x)))
    if mag >= 9 or mag < -4:
        mant = f"{x:.{sig - 1}e}"
        base, _, exp = mant.partition("e")
        base = base.rstrip("0").rstrip(".") if "." in base else base
        return _minus(f"{base}e{int(exp)}")
    decimals = sig - 1 - mag
    rounded = round(x, decimals)
    if rounded != 0 and math.floor(math.log10(abs(rounded))) > mag:  # 9.996 -> 10.0 -> 10
        decimals -= 1
        rounded = round(x, decimals)
    if decimals <= 0:  # 18,630.2 -> 18,600
        return _minus(f"{round(rounded):,}")
    text = f"{rounded:,.{decimals}f}"
    return _minus(text.rstrip("0").rstrip(".") if "." in text else text)


def _minus(text: str) -> str:
    return text.replace("-", MINUS, 1) if text.startswith("-") else text


def signed(x: Any, sig: int = 3, fn: Callable[[Any, int], str] | None = None) -> str:
    """A difference with its sign (``+2.7``, ``−0.4``, ``0``)."""
    if x is None or not _finite(x):
        return NA
    text = (fn or num)(x, sig)
    return text if x <= 0 or text in ("0", "0%", "0 pp") else "+" + text


def count(n: Any) -> str:
    """A count with thousands separators (``5,821``)."""
    if n is None:
        return NA
    if isinstance(n, float):
        if not math.isfinite(n):
            return NA
        n = round(n)
    return _minus(f"{int(n):,}")


def pct(x: Any, sig: int = 3) -> str:
    """A proportion as percent (``12.3%``, ``0.41%``, ``100%``)."""
    if x is None or not _finite(x):
        return NA
    return num(100 * x, sig) + "%"


def pp(x: Any, sig: int = 2) -> str:
    """A difference of proportions in percentage points, signed (``+2.7 pp``)."""
    if x is None or not _finite(x):
        return NA
    return signed(100 * x, sig) + " pp"


def pvalue(p: Any) -> str:
    """A p-value: ``< 0.001`` below a thousandth, else 2 significant digits (``0.034``)."""
    if p is None or not _finite(p):
        return NA
    if p < 0.001:
        return "< 0.001"
    return num(p, 2)


def ms(x: Any, sig: int = 3) -> str:
    """A latency in milliseconds with its unit, seconds from 1 s on (``12.3 ms``, ``1.5 s``)."""
    if x is None or not _finite(x):
        return NA
    if abs(x) >= 1000:
        return num(x / 1000, sig) + " s"
    return num(x, sig) + " ms"


def duration(s: Any) -> str:
    """A duration in words, two units at most (``45 s``, ``3 min 12 s``, ``2 h 5 min``,
    ``3 d 4 h``); under a second in ms."""
    if s is None or not _finite(s):
        return NA
    if s < 0:
        return MINUS + duration(-s)
    if s < 1:
        return ms(1000 * s)
    if s < 60:
        return f"{num(s, 2)} s"
    total = round(s)
    values = []
    for name, size in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        q, total = divmod(total, size)
        values.append((q, name))
    i = next(k for k, (q, _) in enumerate(values) if q)
    out = [f"{values[i][0]:,} {values[i][1]}"]
    if i + 1 < len(values) and values[i + 1][0]:
        out.append(f"{values[i + 1][0]} {values[i + 1][1]}")
    return " ".join(out)


def utc(ts: Any, *, date: bool = True) -> str:
    """A unix time as UTC (``2026-11-30 15:16:01 UTC``; only the clock with ``date=False``)."""
    if ts is None or not _finite(ts):
        return NA
    fmt = "%Y-%m-%d %H:%M:%S UTC" if date else "%H:%M:%S UTC"
    return time.strftime(fmt, time.gmtime(ts))


def utc_span(lo: Any, hi: Any) -> str:
    """A window ``2026-11-30 15:16:01 to 15:18:32 UTC (2 min 31 s)``: the second date only
    when it differs."""
    if lo is None or hi is None or not (_finite(lo) and _finite(hi)):
        return NA
    same_day = time.gmtime(lo)[:3] == time.gmtime(hi)[:3]
    first = utc(lo).removesuffix(" UTC")
    return f"{first} to {utc(hi, date=not same_day)} ({duration(hi - lo)})"


def interval(
    ci: Sequence[Any] | None,
    fn: Callable[[Any], str] | None = None,
    sep: str = " to ",
) -> str:
    """An interval's ends with the same formatter (``+0.4 to +5.1 pp``: the unit once, at the
    end, when the formatter appends one)."""
    if not ci or len(ci) < 2 or ci[0] is None or ci[1] is None:
        return NA
    f = fn or (lambda v: signed(v))
    lo, hi = f(ci[0]), f(ci[1])
    for unit in (" pp", " ms", " s", "%"):
        if lo.endswith(unit) and hi.endswith(unit):
            return f"{lo.removesuffix(unit)}{sep}{hi}"
    return f"{lo}{sep}{hi}"


def bracket(ci: Sequence[Any] | None, fn: Callable[[Any], str] | None = None) -> str:
    """An interval as ``[lo, hi]`` for a table cell."""
    text = interval(ci, fn, sep=", ")
    return text if text == NA else f"[{text}]"


def plural(n: Any, word: str, many: str | None = None) -> str:
    """``1 user``, ``2 users``, ``1,234 users``."""
    return f"{count(n)} {word if n == 1 else (many or word + 's')}"


def share_of(part: Any, whole: Any) -> str:
    """``part`` as a percent of ``whole`` (``–`` when ``whole`` is 0)."""
    if not whole or part is None:
        return NA
    return pct(part / whole)


_FLOAT = re.compile(r"(?<![\w.])(-?)(\d+\.\d+(?:e[-+]?\d+)?|\d+e[-+]?\d+)(?![\w.])")
_P_EQ = re.compile(r"\bp\s*=\s*(\d+(?:\.\d+)?(?:e[-+]?\d+)?)")
_SECONDS = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?) s\b")


def tidy(text: str, sig: int = 3) -> str:
    """Free text with numbers in it (a gate's reason, a decision's reasons, written by the
    analysis with up to 4 significant digits): every decimal re-rendered by :func:`num` and
    every ``p = x`` by :func:`pvalue`, every ``N s`` of a minute or more by :func:`duration`,
    so one rule holds across the report."""

    def secs(m: re.Match[str]) -> str:
        v = float(m.group(1))
        return duration(v) if v >= 60 else m.group(0)

    def p_eq(m: re.Match[str]) -> str:
        v = pvalue(float(m.group(1)))
        return "p < 0.001" if v.startswith("<") else f"p = {v}"

    def dec(m: re.Match[str]) -> str:
        v = float(m.group(2))
        return num(-v if m.group(1) else v, sig)

    return _FLOAT.sub(dec, _P_EQ.sub(p_eq, _SECONDS.sub(secs, text)))
