"""Outcomes, validated and indexed for the join with records (pure; no I/O).

Outcomes (DESIGN.md schema) are read before the records. Those with a ``request_id`` are joined
to that request (and through it to its unit); the others to their unit's first exposure. Rows
are deduplicated so a replayed or retried outcome counts once: on their ``id`` when they have
one (``POST /outcomes`` gives every row one), else on ``(request_id, unit, metric, value,
ts)``. Rows of other experiments are counted by name, not analysed.

Rows are kept as polars frames while loading. Request-joined rows end up in flat sorted arrays
(request-id fingerprint, metric index, value: 18 bytes a row), joined to a page of records with
``numpy.searchsorted``; unit-joined rows stay a small frame. At most ``max_metrics`` distinct
metric names are analysed; more is an error (:class:`TooManyMetrics`), not a silent cut.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np
import polars as pl

from router.analysis.frames import (
    HASH_SEED,
    OUTCOME_SCHEMA,
    Chunk,
    Invalid,
    parse_outcomes,
    rid_hash,
)
from router.analysis.sketches import IdSet
from router.capture.outcomes import validate_outcome

_COLS = ["id", "request_id", "unit", "metric", "value", "ts"]
UNIT_ROWS_SCHEMA: dict[str, pl.DataType] = {
    "unit": pl.String(),
    "metric": pl.String(),
    "value": pl.Float64(),
    "ts": pl.Float64(),
}
MAX_METRICS = 256
MAX_EXPERIMENT_NAMES = 20  # other experiments counted by name; more are summed under "…"


class TooManyMetrics(ValueError):
    """More distinct outcome metric names than the analysis keeps."""


def count_experiment(counts: Counter[str], name: str, n: int = 1) -> None:
    """Count ``n`` rows of another experiment, by name up to a bound."""
    if name not in counts and len(counts) >= MAX_EXPERIMENT_NAMES:
        name = "…"
    counts[name] += n


class OutcomeIndex:
    def __init__(self, max_metrics: int = MAX_METRICS) -> None:
        self.total = 0
        self.invalid = 0
        self.outside_window = 0
        self.max_metrics = max_metrics
        self.rejected = Invalid()  # invalid rows by reason
        self.other_experiments: Counter[str] = Counter()
        self._duplicates = 0
        self._rows: list[dict[str, Any]] = []  # validated dicts, folded in at the next use
        self._req: list[pl.DataFrame] = []  # h, m, v (18 bytes a row), deduplicated
        self._req_ids = IdSet()  # the identities of the request-joined rows kept (8 bytes)
        self._unit: list[pl.DataFrame] = []  # ident, unit, metric, value, ts
        self._names: list[str] = []
        self._ids: dict[str, int] = {}
        self._final: dict[str, Any] | None = None
        self._sealed = False  # a copy unpickled in a worker: the index only, read-only

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (to the processes and Dask workers of :mod:`router.analysis.distribute`)
        as the finished index only: the sorted arrays and the unit-joined rows, 18 bytes a
        request-joined row, not the frames it was built from (and not sorted again there)."""
        self._finalise()
        state = self.__dict__.copy()
        state.update(_rows=[], _req=[], _unit=[], _req_ids=IdSet(), _sealed=True)
        return state

    def _check_open(self) -> None:
        if self._sealed:
            raise RuntimeError("an unpickled outcome index is read-only (rows cannot be added)")

    # ------------------------------------------------------------------ loading
    def add_all(
        self,
        rows: Iterable[dict[str, Any]],
        experiment: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> None:
        for n, o in enumerate(rows, 1):
            self.add(o, experiment, since, until, where=f"item {n}")

    def add(
        self,
        o: Any,
        experiment: str | None = None,
        since: float | None = None,
        until: float | None = None,
        where: str | None = None,
    ) -> None:
        """One outcome as posted to ``/outcomes`` (validated by the same rules)."""
        self.total += 1
        row = validate_outcome(o, experiment or "", now=0.0)
        if isinstance(row, str):
            self.invalid += 1
            self.rejected.add(row, where)
            return
        if experiment and row["experiment"] != experiment:
            count_experiment(self.other_experiments, row["experiment"])
            return
        ts = row["ts"]
        if (since is not None and ts and ts < since) or (until is not None and ts > until):
            self.outside_window += 1
            return
        self._check_open()
        self._final = None
        self._rows.append({k: row[k] for k in _COLS})

    def add_raw(
        self,
        chunks: Iterable[bytes | Chunk],
        experiment: str | None = None,
        since: float | None = None,
        until: float | None = None,
        unit_rows_only: bool = False,
    ) -> None:
        """Outcome rows as JSON lines (from JSONL or a stream), a chunk of lines at a time.
        ``unit_rows_only``: keep the unit-joined rows only (the pre-exposure history read from
        before the window for CUPED; request-joined rows there count as outside the window)."""
        for chunk in chunks:
            if not isinstance(chunk, Chunk):
                chunk = Chunk(chunk)
            df, bad = parse_outcomes(chunk.data)
            self.add_frame(df, [(chunk.where(i), reason) for i, reason in bad], experiment,
                           since, until, unit_rows_only)  # fmt: skip

    def add_frame(
        self,
        df: pl.DataFrame,
        bad: list[tuple[str, str]],
        experiment: str | None = None,
        since: float | None = None,
        until: float | None = None,
        unit_rows_only: bool = False,
    ) -> None:
        """Valid outcome rows in columns (:data:`OUTCOME_SCHEMA`), and ``(where, reason)`` of
        the invalid rows read with them (``unit_rows_only`` as in :meth:`add_raw`)."""
        self.total += df.height + len(bad)
        self.invalid += len(bad)
        for where, reason in bad:
            self.rejected.add(reason, where)
        if experiment:
            other = pl.col("experiment").is_not_null() & (pl.col("experiment") != experiment)
            others = df.filter(other)
            if others.height:
                for name, n in others.group_by("experiment").len().iter_rows():
                    count_experiment(self.other_experiments, name, n)
                df = df.filter(~other)
        kept = df.with_columns(pl.col("ts").fill_null(0.0))
        inside = pl.lit(True)
        if since is not None:
            inside = inside & ((pl.col("ts") == 0.0) | (pl.col("ts") >= since))
        if until is not None:
            inside = inside & (pl.col("ts") <= until)
        if unit_rows_only:
            inside = inside & (pl.col("request_id").fill_null("").str.len_bytes() == 0)
        win = kept.filter(inside)
        self.outside_window += kept.height - win.height
        self._ingest(win)

    def _ingest(self, df: pl.DataFrame) -> None:
        """Compact valid rows: request-joined ones to fingerprints and metric ids."""
        if not df.height:
            return
        self._check_open()
        self._final = None
        df = df.select(
            pl.when(pl.col("id").str.len_bytes() > 0).then(pl.col("id")),
            pl.when(pl.col("request_id").str.len_bytes() > 0).then(pl.col("request_id")),
            pl.when(pl.col("unit").str.len_bytes() > 0).then(pl.col("unit")),
            "metric",
            "value",
            "ts",
        )
        content = pl.struct(
            pl.col("request_id").fill_null(""), pl.col("unit").fill_null(""), *_COLS[3:]
        ).hash(HASH_SEED)
        # the row's id when it has one (a retry carries the same id), else its content
        by_id = pl.col("id").hash(HASH_SEED + 1)
        ident = pl.when(pl.col("id").is_not_null()).then(by_id).otherwise(content)
        by_req = pl.col("request_id").is_not_null()
        req = df.filter(by_req)
        if req.height:
            for name in req["metric"].unique(maintain_order=True).to_list():
                if name not in self._ids:
                    self._register(name)
            part = req.select(
                ident=ident,
                h=rid_hash(pl.col("request_id")),
                m=pl.col("metric").replace_strict(self._ids, return_dtype=pl.UInt16),
                v=pl.col("value"),
            )
            # deduplicated as they come (the first occurrence kept), against a set of the
            # identities kept: no global pass over every row (and its copies) at the end
            part = part.filter(pl.col("ident").is_first_distinct())
            ids = part["ident"].to_numpy().view(np.int64)
            new = ~self._req_ids.contains(ids)
            if not new.all():
                part = part.filter(new)
                ids = ids[new]
            self._req_ids.add_new(ids)
            self._duplicates += req.height - part.height
            self._req.append(part.drop("ident"))
        units = df.filter(~by_req)
        if units.height:
            self._unit.append(units.select(ident.alias("ident"), "unit", "metric", "value", "ts"))

    def _register(self, name: str) -> None:
        if len(self._names) >= self.max_metrics:
            raise TooManyMetrics(
                f"more than {self.max_metrics} distinct outcome metric names (e.g. "
                f"{', '.join(repr(n) for n in self._names[:3])}, {name!r}); the analysis keeps "
                "at most that many (policy data_quality.max_metrics)"
            )
        self._ids[name] = len(self._names)
        self._names.append(name)

    # ------------------------------------------------------------------ the index
    def _finalise(self) -> dict[str, Any]:
        """Deduplicate (first occurrence kept) and sort (once; cached until the next insert)."""
        if self._final is None:
            if self._rows:
                schema = {k: OUTCOME_SCHEMA[k] for k in _COLS}
                self._ingest(pl.DataFrame(self._rows, schema=schema))
                self._rows = []
            parts = self._req or [pl.DataFrame(schema=_REQ_SCHEMA)]
            req = pl.concat(parts) if len(parts) > 1 else parts[0]
            units = _dedupe(self._unit, _UNIT_SCHEMA)
            self._duplicates += sum(f.height for f in self._unit) - units.height
            srt = req.sort("h", maintain_order=True)
            del req  # (the unsorted copy: freed before the metric summary below)
            # one sorted frame kept; the arrays below are views of it (no second copy)
            self._req, self._unit = [srt], [units]
            metrics: dict[str, dict[str, Any]] = {}
            binary = pl.col("v").is_in([0.0, 1.0]).all()
            for m, n, b in srt.group_by("m").agg(pl.len(), binary).sort("m").iter_rows():
                metrics[self._names[m]] = {"n": int(n), "binary": bool(b)}
            kinds = units.group_by("metric", maintain_order=True).agg(
                pl.len(), pl.col("value").is_in([0.0, 1.0]).all()
            )
            for name, n, b in kinds.iter_rows():
                if name not in self._ids:  # unit-joined metric names count against the cap
                    self._register(name)
                info = metrics.setdefault(name, {"n": 0, "binary": True})
                info["n"] += int(n)
                info["binary"] = info["binary"] and bool(b)
            self._final = {
                "rows": (srt["h"].to_numpy(), srt["m"].to_numpy(), srt["v"].to_numpy()),
                "by_unit": units.drop("ident"),
                "metrics": metrics,
            }
        return self._final

    def lookup(
        self, rid_hashes: np.ndarray, presorted: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """For each request-id fingerprint, the ``[left, right)`` slice of its outcomes in
        :attr:`rows` (empty when it has none)."""
        h = self.rows[0]
        if presorted:
            return _slices(h, rid_hashes)
        order = np.argsort(rid_hashes)  # sorted queries walk the index cache-friendly
        left = np.empty(rid_hashes.size, dtype=np.int64)
        right = np.empty(rid_hashes.size, dtype=np.int64)
        left[order], right[order] = _slices(h, rid_hashes[order])
        return left, right

    @property
    def rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sorted (request-id fingerprint, metric index, value) arrays."""
        rows: tuple[np.ndarray, np.ndarray, np.ndarray] = self._finalise()["rows"]
        return rows

    @property
    def metric_names(self) -> list[str]:
        """Metric of each index in :attr:`rows`."""
        self._finalise()
        return self._names

    def metric_id(self, name: str | None) -> int | None:
        self._finalise()
        return None if name is None else self._ids.get(name)

    @property
    def by_unit(self) -> pl.DataFrame:
        """Unit-joined rows: unit, metric, value, ts."""
        df: pl.DataFrame = self._finalise()["by_unit"]
        return df

    @property
    def by_request_total(self) -> int:
        return int(self.rows[0].size)

    @property
    def metrics(self) -> dict[str, dict[str, Any]]:
        """``{name: {"n": rows, "binary": all values 0 or 1}}`` over both kinds of rows."""
        metrics: dict[str, dict[str, Any]] = self._finalise()["metrics"]
        return metrics

    @property
    def valid(self) -> int:
        return self.by_request_total + self.by_unit.height

    @property
    def duplicate_rows(self) -> int:
        self._finalise()
        return self._duplicates


_REQ_SCHEMA: dict[str, pl.DataType] = {
    "h": pl.Int64(),
    "m": pl.UInt16(),
    "v": pl.Float64(),
}
_UNIT_SCHEMA: dict[str, pl.DataType] = {"ident": pl.UInt64()} | UNIT_ROWS_SCHEMA


def _slices(h: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``searchsorted(h, q, "left")`` and ``(…, "right")`` with one binary search: a request
    has a few outcome rows at most, so the right ends are found by stepping from the left ones
    (one pass per row of the longest run), not by a second search through the whole index."""
    left = np.searchsorted(h, q, "left")
    right = left.copy()
    idx = np.arange(q.size)
    while idx.size:
        at = right[idx]
        inside = at < h.size
        idx, at = idx[inside], at[inside]
        idx = idx[h[at] == q[idx]]
        right[idx] += 1
    return left, right


def _dedupe(parts: list[pl.DataFrame], schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """Rows of ``parts`` in order, each identity's first occurrence only."""
    if not parts:
        return pl.DataFrame(schema=schema)
    df = pl.concat(parts) if len(parts) > 1 else parts[0]
    return df.filter(pl.col("ident").is_first_distinct())
