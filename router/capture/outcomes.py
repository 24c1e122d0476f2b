"""Outcome rows (pure validation).

Schema (DESIGN.md, v1)::

    {"v": 1, "id": str | null, "experiment": str, "request_id": str | null,
     "unit": str | null, "metric": str, "value": float, "ts": float}

``POST /outcomes`` takes one JSON object, a JSON array of objects, or JSON lines. ``v`` defaults
to 1, ``experiment`` to the router's experiment (another experiment is rejected: nothing would
read it), ``ts`` to now. At least one of ``request_id`` or ``unit`` is required (the analyzer
joins by request id, else by unit).

**Retries.** ``id`` is the row's idempotency key: the analyzer counts one row per id. A row
posted without one gets :func:`content_id`: a hash of its experiment, request id, unit, metric,
value and, only when the client sent it, ``ts``. So a blind retry of a row without ``ts`` (whose
``ts`` defaults to a different receipt time each time) counts once; two identical events meant
to count twice need distinct ids (or distinct ``ts``).
"""

from __future__ import annotations

import hashlib
import math
import time
from typing import Any

import orjson

from router.capture.records import ts_problem

MAX_ROWS = 5_000
MAX_ID_LENGTH = 256
_ALLOWED = {"v", "id", "experiment", "request_id", "unit", "metric", "value", "ts"}


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
    oid = row.get("id")
    if oid is not None and (not isinstance(oid, str) or not 0 < len(oid) <= MAX_ID_LENGTH):
        return f"id: must be a non-empty string of at most {MAX_ID_LENGTH} characters"
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
    if "ts" in row:
        why = ts_problem(float(ts))
        if why is not None:
            return why
    return {
        "v": 1,
        "id": oid,
        "experiment": exp,
        "request_id": rid or None,
        "unit": None if unit in (None, "") else str(unit),
        "metric": metric,
        "value": float(value),
        "ts": float(ts),
    }


def content_id(row: dict[str, Any], with_ts: bool) -> str:
    """The idempotency key of a row posted without ``id``: a hash of what it says (its
    ``ts`` only when the client sent one, not the receipt time it defaulted to)."""
    keys = ["experiment", "request_id", "unit", "metric", "value"] + (["ts"] if with_ts else [])
    digest = hashlib.sha256(orjson.dumps([row[k] for k in keys])).hexdigest()
    return f"c:{digest[:32]}"


def parse_outcomes(
    raw: bytes, default_experiment: str, max_rows: int = MAX_ROWS
) -> tuple[list[dict[str, Any]], list[tuple[int, str]]]:
    """Split a request body into valid rows and ``(line number, reason)`` rejections. Rows of
    another experiment than ``default_experiment`` (the router's) are rejected, and so is a
    row repeating the id of an earlier row of the same body."""
    now = time.time()
    seen: dict[str, int] = {}
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
            continue
        if out["experiment"] != default_experiment:
            other = out["experiment"]
            rejected.append((n, f"experiment: this router runs {default_experiment!r}, not "
                                f"{other!r} (no reader would see the row)"))  # fmt: skip
            continue
        if out["id"] is None:
            out["id"] = content_id(out, with_ts=isinstance(row, dict) and "ts" in row)
        first = seen.setdefault(out["id"], n)
        if first != n:
            rejected.append((n, f"duplicate: the same id as line {first} (rows without an id "
                                "or ts are identified by their content)"))  # fmt: skip
            continue
        accepted.append(out)
    return accepted, rejected
