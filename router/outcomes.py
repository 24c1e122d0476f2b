"""Outcome rows (pure validation).

Schema (DESIGN.md, v1)::

    {"v": 1, "experiment": str, "request_id": str | null, "unit": str | null,
     "metric": str, "value": float, "ts": float}

``POST /outcomes`` takes one JSON object, a JSON array of objects, or JSON lines. ``v`` defaults
to 1, ``experiment`` to the router's experiment, ``ts`` to now. At least one of ``request_id``
or ``unit`` is required (the analyzer joins by request id, else by unit).
"""

from __future__ import annotations

import math
import time
from typing import Any

import orjson

MAX_ROWS = 10_000
_ALLOWED = {"v", "experiment", "request_id", "unit", "metric", "value", "ts"}


def validate_outcome(row: Any, default_experiment: str, now: float) -> dict[str, Any] | str:
    """The normalised row, or a one-line reason why it is invalid."""
    if not isinstance(row, dict):
        return "not a JSON object"
    unknown = set(row) - _ALLOWED
    if unknown:
        return f"unknown field(s): {', '.join(sorted(unknown))}"
    if row.get("v", 1) != 1:
        return "v: only version 1 is supported"
    exp = row.get("experiment", default_experiment)
    if not isinstance(exp, str) or not exp:
        return "experiment: must be a non-empty string"
    rid, unit = row.get("request_id"), row.get("unit")
    if rid is not None and not isinstance(rid, str):
        return "request_id: must be a string or null"
    if unit is not None and not isinstance(unit, (str, int)):
        return "unit: must be a string or null"
    if not rid and unit in (None, ""):
        return "needs request_id or unit to be joined"
    metric = row.get("metric")
    if not isinstance(metric, str) or not metric:
        return "metric: must be a non-empty string"
    value = row.get("value")
    if isinstance(value, bool):
        value = float(value)
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return "value: must be a finite number"
    ts = row.get("ts", now)
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts):
        return "ts: must be a unix timestamp in seconds"
    return {
        "v": 1,
        "experiment": exp,
        "request_id": rid or None,
        "unit": None if unit in (None, "") else str(unit),
        "metric": metric,
        "value": float(value),
        "ts": float(ts),
    }


def parse_outcomes(
    raw: bytes, default_experiment: str, max_rows: int = MAX_ROWS
) -> tuple[list[dict[str, Any]], list[tuple[int, str]]]:
    """Split a request body into valid rows and ``(line number, reason)`` rejections."""
    now = time.time()
    accepted: list[dict[str, Any]] = []
    rejected: list[tuple[int, str]] = []
    text = raw.strip()
    if not text:
        return [], [(1, "empty body")]
    rows: list[tuple[int, Any]] = []
    try:
        doc = orjson.loads(text)
        if isinstance(doc, list):
            rows = [(i + 1, r) for i, r in enumerate(doc)]
        else:
            rows = [(1, doc)]
    except orjson.JSONDecodeError:
        for i, line in enumerate(text.split(b"\n")):
            if not line.strip():
                continue
            try:
                rows.append((i + 1, orjson.loads(line)))
            except orjson.JSONDecodeError as exc:
                rejected.append((i + 1, f"invalid JSON: {exc}"[:200]))
    for n, row in rows:
        if len(accepted) >= max_rows:
            rejected.append((n, f"batch larger than {max_rows} rows"))
            continue
        out = validate_outcome(row, default_experiment, now)
        if isinstance(out, str):
            rejected.append((n, out))
        else:
            accepted.append(out)
    return accepted, rejected
