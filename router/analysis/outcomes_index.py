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

import msgspec

from router.outcomes import validate_outcome


class OutcomeRow(msgspec.Struct, gc=False, forbid_unknown_fields=True):
    """An outcome as :func:`router.outcomes.validate_outcome` accepts it, decoded in C."""

    metric: str
    value: float
    request_id: str | None = None
    unit: str | None = None
    ts: float | None = None
    experiment: str | None = None
    v: int = 1


_decoder = msgspec.json.Decoder(OutcomeRow)


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
    _seen: set[int] = field(default_factory=set, repr=False)  # hashes of row identities

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
        row = validate_outcome(o, experiment or "", now=0.0)  # the POST /outcomes rules
        if isinstance(row, str):
            self.invalid += 1
            return
        self._insert(
            row["request_id"],
            row["unit"],
            row["metric"],
            row["value"],
            row["ts"],
            row["experiment"],
            experiment,
            since,
            until,
        )

    def add_raw(
        self,
        pages: Iterable[list[bytes]],
        experiment: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> None:
        """Outcome rows as raw JSON (from JSONL or a stream), decoded and validated in C."""
        dec = _decoder
        for page in pages:
            for raw in page:
                self.total += 1
                try:
                    o = dec.decode(raw)
                except (msgspec.DecodeError, msgspec.ValidationError):
                    self.invalid += 1
                    continue
                if not o.metric or not math.isfinite(o.value) or not (o.request_id or o.unit):
                    self.invalid += 1
                    continue
                self._insert(
                    o.request_id,
                    o.unit,
                    o.metric,
                    o.value,
                    o.ts or 0.0,
                    o.experiment,
                    experiment,
                    since,
                    until,
                )

    def _insert(
        self,
        rid: str | None,
        unit: str | None,
        metric: str,
        value: float,
        ts: float,
        row_experiment: str | None,
        experiment: str | None,
        since: float | None,
        until: float | None,
    ) -> None:
        if experiment and row_experiment not in (None, experiment):
            self.invalid += 1
            return
        if (since is not None and ts and ts < since) or (until is not None and ts > until):
            self.outside_window += 1
            return
        key = hash((rid or "", unit or "", metric, ts, value))
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
