"""Outcomes, validated and indexed for the join with records (pure; no I/O).

Outcomes (DESIGN.md schema) are read before the records. Those with a ``request_id`` are joined
to that request (and through it to its unit); the others to their unit's first exposure. Rows
are deduplicated so a replayed or retried outcome counts once: on their ``id`` when they have
one (``POST /outcomes`` gives every row one), else on ``(request_id, unit, metric, value,
ts)``. Rows of other experiments are counted by name, not analysed.

Rows are kept as polars frames while loading, with their identity (8 bytes a row); they are
deduplicated once, when the index is first used (a count of the distinct identities; a filter
only when there are duplicates), and sorted. Request-joined rows end up in flat sorted arrays
(request-id fingerprint, metric index, value: 18 bytes a row) with a directory of their
fingerprints' top bits (4 bytes a row at most), joined to a page of records sorted by the same
fingerprint (:meth:`OutcomeIndex.join`) in a few vectorised steps, not a binary search through
the whole index per record. The identities are kept until the first join (rows may be added
until then), then freed: an index joined to records is read-only. Unit-joined rows stay a small
frame. At most ``max_metrics`` distinct metric names are analysed; more is an error
(:class:`TooManyMetrics`), not a silent cut.
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
        # ident, h, m, v (26 bytes a row) as added, deduplicated and sorted by _finalise into
        # _sorted (h, m, v: 18 bytes a row) and _kept (the identities of its rows, 8 bytes)
        self._req: list[pl.DataFrame] = []
        self._sorted = pl.DataFrame(schema=_SORTED_SCHEMA)
        self._kept: list[pl.Series] = []
        self._unit: list[pl.DataFrame] = []  # ident, unit, metric, value, ts
        self._names: list[str] = []
        self._ids: dict[str, int] = {}
        self._final: dict[str, Any] | None = None
        self._sealed = False  # a copy unpickled in a worker: the index only, read-only
        self._joined = False  # joined to records: read-only, the identities freed (join)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (to the processes and Dask workers of :mod:`router.analysis.distribute`)
        as the finished index only: the sorted arrays and the unit-joined rows, 18 bytes a
        request-joined row, not the frames it was built from (and not sorted again there)."""
        final = self._finalise()
        state = self.__dict__.copy()
        state["_final"] = dict(final, directory=None)  # (built at the first join there)
        state.update(_rows=[], _req=[], _unit=[], _sorted=None, _kept=[], _sealed=True)
        return state

    def _check_open(self) -> None:
        if self._sealed:
            raise RuntimeError("an unpickled outcome index is read-only (rows cannot be added)")
        if getattr(self, "_joined", False):
            raise RuntimeError("outcome rows cannot be added to an index already joined to "
                               "records (those joins would be stale)")  # fmt: skip

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
            # deduplicated (the first occurrence of an identity kept) once, with the sort
            self._req.append(req.select(
                ident=ident,
                h=rid_hash(pl.col("request_id")),
                m=pl.col("metric").replace_strict(self._ids, return_dtype=pl.UInt16),
                v=pl.col("value"),
            ))  # fmt: skip
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
            units = _dedupe(self._unit, _UNIT_SCHEMA)
            self._duplicates += sum(f.height for f in self._unit) - units.height
            srt = self._sort_requests()
            self._unit = [units]
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
            h = srt["h"].to_numpy()
            runs = np.zeros(h.size, dtype=bool)  # the next row has the same fingerprint
            np.equal(h[1:], h[:-1], out=runs[:-1])
            self._final = {
                "rows": (h, srt["m"].to_numpy(), srt["v"].to_numpy()),
                "directory": None,  # (built at the first join: see join)
                "runs": runs if runs.any() else None,  # (1 byte a row, only when needed)
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

    def join(self, rid_hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The outcome rows of requests with these fingerprints (sorted: a page of records):
        ``(record, metric index, value)`` per joined row, by record, each record's rows in
        the order they were added (the same rows and order as slicing :meth:`lookup`'s
        ``[left, right)`` of each record in turn).

        Each fingerprint starts at the first row of its directory bucket (a bucket holds a
        few rows) and steps on while the rows are not past it: a few vectorised passes, each
        over fewer fingerprints, instead of a binary search of the whole index per record
        (stepping out of a bucket is harmless: the next one's rows are all past it)."""
        final = self._finalise()
        if not self._joined:  # (read-only from now on: the identities are not needed)
            self._joined, self._kept = True, []
        h, met, val = final["rows"]
        n = h.size
        bits, starts = final.get("directory") or (0, None)
        if starts is None or starts[-1] != n:  # (the first join; a snapshot has none)
            bits, starts = final["directory"] = _directory(h)
        q = rid_hashes
        if not n or not q.size:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64)
        at = starts[_bucket(q, bits)].astype(np.int64)
        np.minimum(at, n - 1, out=at)
        idx = np.arange(q.size)
        recs: list[np.ndarray] = []
        pos: list[np.ndarray] = []
        runs = final.get("runs")  # (None: no fingerprint has two rows; see _finalise)
        while idx.size:
            hv = h[at]
            eq = hv == q
            go = hv < q
            if eq.any():
                recs.append(idx[eq])
                pos.append(at[eq])
                if runs is not None:  # (on to the fingerprint's next row)
                    go |= eq & runs[at]
            at += 1
            go &= at < n
            if not go.all():
                idx, at, q = idx[go], at[go], q[go]
        if not recs:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64)
        row_of, where = (recs[0], pos[0]) if len(recs) == 1 else _by_record(recs, pos)
        return row_of, met[where].astype(np.int64), val[where]

    def _sort_requests(self) -> pl.DataFrame:
        """The request-joined rows deduplicated (each identity's first occurrence, in the
        order added) and sorted by fingerprint (stable: the rows of one request keep their
        order): the rows added since the last call after those sorted then, which are
        distinct, so they all stay. Duplicates are rare: one count of the distinct identities
        finds there are none, and only then are they filtered out. The frames added are
        sorted as they are (their chunks), not concatenated first."""
        parts, self._req = self._req, []
        if not parts:
            return self._sorted
        new = pl.concat(parts, rechunk=False) if len(parts) > 1 else parts[0]
        del parts
        before = sum(s.len() for s in self._kept)
        idents = pl.concat([*self._kept, new["ident"]], rechunk=False)
        if idents.n_unique() < idents.len():
            first = idents.is_first_distinct().slice(before)
            self._duplicates += new.height - int(first.sum())
            new = new.filter(first)
        del idents
        self._kept.append(new["ident"])
        both = pl.concat([self._sorted, new.drop("ident")], rechunk=False)
        del new
        self._sorted = both.sort("h", maintain_order=True)
        return self._sorted

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
    "ident": pl.UInt64(),
    "h": pl.Int64(),
    "m": pl.UInt16(),
    "v": pl.Float64(),
}
_SORTED_SCHEMA = {k: v for k, v in _REQ_SCHEMA.items() if k != "ident"}
_UNIT_SCHEMA: dict[str, pl.DataType] = {"ident": pl.UInt64()} | UNIT_ROWS_SCHEMA


DIRECTORY_ROWS = 1  # index rows per directory bucket, at least (about 1 to 2)


def _directory(h: np.ndarray) -> tuple[int, np.ndarray]:
    """The bucket directory of sorted fingerprints ``h``: ``(bits, starts)``, where the rows
    whose top ``bits`` bits are bucket ``i`` (:func:`_bucket`) are ``h[starts[i]:starts[i+1]]``.
    Fingerprints are uniform, so buckets hold :data:`DIRECTORY_ROWS` to twice that rows on
    average; ``starts`` is 4 bytes a bucket (4 bytes an index row at most)."""
    bits = max(1, min(32, int(h.size // DIRECTORY_ROWS).bit_length() - 1))
    counts = np.bincount(_bucket(h, bits), minlength=(1 << bits) + 1)
    starts = np.zeros((1 << bits) + 2, dtype=np.int32 if h.size < 2**31 else np.int64)
    np.cumsum(counts, out=starts[1:])
    return bits, starts


def _bucket(h: np.ndarray, bits: int) -> np.ndarray:
    """The directory bucket of signed fingerprints: their top ``bits`` bits, ordered as the
    fingerprints are (the sign bit flipped)."""
    return (h >> (64 - bits)) + (1 << (bits - 1))


def _by_record(recs: list[np.ndarray], pos: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Joined rows found over several passes, by record (each record's rows were found in
    index order, one a pass: a stable sort keeps that order)."""
    row_of, where = np.concatenate(recs), np.concatenate(pos)
    order = np.argsort(row_of, kind="stable")
    return row_of[order], where[order]


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
