"""Outcomes, validated and indexed for the join with records (pure; no I/O).

Outcomes (DESIGN.md schema) are read before the records. Those with a ``request_id`` are joined
to that request (and through it to its unit); the others to their unit's first exposure. Rows
are deduplicated on ``(request_id, unit, metric, ts, value)`` so a replayed outcome counts once.

Request-joined outcomes are kept in flat typed arrays (request-id hash, metric index, value:
18 bytes a row instead of a few hundred as Python objects), sorted once, and joined to a batch
of records with ``numpy.searchsorted``.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np

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
    by_unit: list[tuple[str, str, float, float]] = field(default_factory=list)
    metric_names: list[str] = field(default_factory=list)
    total: int = 0
    invalid: int = 0
    duplicates: int = 0
    outside_window: int = 0
    # request-joined rows while loading (typed arrays: no Python object per row)
    _rid: array[int] = field(default_factory=lambda: array("q"), repr=False)
    _metric: array[int] = field(default_factory=lambda: array("H"), repr=False)
    _value: array[float] = field(default_factory=lambda: array("d"), repr=False)
    _ident: array[int] = field(default_factory=lambda: array("q"), repr=False)
    _unit_seen: set[int] = field(default_factory=set, repr=False)
    _metric_ids: dict[str, int] = field(default_factory=dict, repr=False)
    _final: tuple[np.ndarray, np.ndarray, np.ndarray] | None = field(default=None, repr=False)
    _metrics: dict[str, dict[str, Any]] | None = field(default=None, repr=False)

    # ------------------------------------------------------------------ loading
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
        self._final = self._metrics = None
        ident = hash((rid or "", unit or "", metric, ts, value))
        if rid:
            mid = self._metric_ids.get(metric)
            if mid is None:
                mid = self._metric_ids[metric] = len(self.metric_names)
                self.metric_names.append(metric)
            self._rid.append(hash(rid))
            self._metric.append(mid)
            self._value.append(value)
            self._ident.append(ident)
        else:
            if ident in self._unit_seen:
                self.duplicates += 1
                return
            self._unit_seen.add(ident)
            self.by_unit.append((str(unit), metric, value, ts))

    # ------------------------------------------------------------------ the index
    def _finalise(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Deduplicate and sort the request-joined rows (once; cached until the next insert)."""
        if self._final is None:
            ident = np.frombuffer(self._ident, dtype=np.int64) if self._ident else np.zeros(0)
            _, first = np.unique(ident, return_index=True)
            first.sort()  # keep the first occurrence, in arrival order
            dups = len(self._ident) - first.size
            rid = (
                np.frombuffer(self._rid, dtype=np.int64)[first]
                if first.size
                else np.zeros(0, dtype=np.int64)
            )
            met = (
                np.frombuffer(self._metric, dtype=np.uint16)[first]
                if first.size
                else np.zeros(0, dtype=np.uint16)
            )
            val = np.frombuffer(self._value, dtype=float)[first] if first.size else np.zeros(0)
            order = np.argsort(rid, kind="stable")
            self._final = (rid[order], met[order], val[order])
            self._dups = dups
        return self._final

    def lookup(self, rid_hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each request-id hash, the ``[left, right)`` slice of its outcomes in
        :attr:`rows` (empty when it has none)."""
        h = self._finalise()[0]
        order = np.argsort(rid_hashes)  # sorted queries walk the index cache-friendly
        q = rid_hashes[order]
        left = np.empty(q.size, dtype=np.int64)
        right = np.empty(q.size, dtype=np.int64)
        left[order] = np.searchsorted(h, q, "left")
        right[order] = np.searchsorted(h, q, "right")
        return left, right

    @property
    def rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sorted (request-id hash, metric index, value) arrays."""
        return self._finalise()

    @property
    def by_request_total(self) -> int:
        return int(self._finalise()[0].size)

    @property
    def request_duplicates(self) -> int:
        self._finalise()
        return int(self._dups)

    @property
    def metrics(self) -> dict[str, dict[str, Any]]:
        """``{name: {"n": rows, "binary": all values 0 or 1}}`` over both kinds of rows."""
        if self._metrics is None:
            _, met, val = self._finalise()
            out: dict[str, dict[str, Any]] = {}
            for i, name in enumerate(self.metric_names):
                v = val[met == i]
                if v.size:
                    out[name] = {"n": int(v.size), "binary": bool(np.isin(v, (0.0, 1.0)).all())}
            for _unit, name, value, _ts in self.by_unit:
                info = out.setdefault(name, {"n": 0, "binary": True})
                info["n"] += 1
                if value not in (0.0, 1.0):
                    info["binary"] = False
            self._metrics = out
        return self._metrics

    @property
    def valid(self) -> int:
        return self.by_request_total + len(self.by_unit)

    @property
    def duplicate_rows(self) -> int:
        return self.duplicates + self.request_duplicates
