"""Outcomes, validated and indexed for the join with records (pure; no I/O).

Outcomes (DESIGN.md schema) are read before the records: those with a ``request_id`` are joined
to that request (and through it to its unit), the others to their unit's first exposure. Rows
are deduplicated on ``(request_id or unit, metric, ts, value)`` so a replayed outcome counts once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


def outcome_problem(o: Any) -> str | None:
    """Why an outcome row is invalid, or None when it is valid."""
    if not isinstance(o, dict):
        return "not a JSON object"
    metric = o.get("metric")
    if not isinstance(metric, str) or not metric:
        return "metric must be a non-empty string"
    v = o.get("value")
    if isinstance(v, bool):
        v = float(v)
    if not isinstance(v, (int, float)) or not math.isfinite(v):
        return "value must be a finite number"
    rid, unit = o.get("request_id"), o.get("unit")
    if not (isinstance(rid, str) and rid) and not (isinstance(unit, str) and unit):
        return "request_id or unit is required"
    ts = o.get("ts")
    if ts is not None and (isinstance(ts, bool) or not isinstance(ts, (int, float))):
        return "ts must be a number"
    return None


@dataclass
class OutcomeIndex:
    by_request: dict[str, list[tuple[str, float, float]]] = field(default_factory=dict)
    by_unit: list[tuple[str, str, float, float]] = field(default_factory=list)
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> n, binary
    total: int = 0
    invalid: int = 0
    duplicates: int = 0
    outside_window: int = 0
    by_request_total: int = 0
    _seen: set[tuple[Any, ...]] = field(default_factory=set, repr=False)

    def add_all(
        self,
        rows: Iterable[dict[str, Any]],
        experiment: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> None:
        for o in rows:
            self.add(o, experiment, since, until)

    def add(
        self,
        o: Any,
        experiment: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> None:
        self.total += 1
        if outcome_problem(o) is not None:
            self.invalid += 1
            return
        if experiment and o.get("experiment") not in (None, experiment):
            self.invalid += 1
            return
        ts = float(o.get("ts") or 0.0)
        if (since is not None and ts and ts < since) or (until is not None and ts > until):
            self.outside_window += 1
            return
        metric, value = o["metric"], float(o["value"])
        rid, unit = o.get("request_id"), o.get("unit")
        key = (rid or "", unit or "", metric, ts, value)
        if key in self._seen:
            self.duplicates += 1
            return
        self._seen.add(key)
        info = self.metrics.setdefault(metric, {"n": 0, "binary": True})
        info["n"] += 1
        if value not in (0.0, 1.0):
            info["binary"] = False
        if isinstance(rid, str) and rid:
            self.by_request.setdefault(rid, []).append((metric, value, ts))
            self.by_request_total += 1
        else:
            self.by_unit.append((str(unit), metric, value, ts))

    @property
    def valid(self) -> int:
        return self.by_request_total + len(self.by_unit)
