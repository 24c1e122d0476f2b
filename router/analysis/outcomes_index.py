"""Outcomes, validated and indexed for the join with records (pure; no I/O).

Outcomes (DESIGN.md schema) are read before the records. Those with a ``request_id`` are joined
to that request (and through it to its unit); the others to their unit's first exposure. Rows
are deduplicated so a replayed or retried outcome counts once: on their ``id`` when they have
one (``POST /outcomes`` gives every row one), else on ``(request_id, unit, metric, value,
ts)``. Rows of other experiments are counted by name, not analysed.

Rows are kept as polars frames while loading, with their identity (8 bytes a row); a
request-joined row's (metric, value) pair is coded as it comes in (a byte: a table of at most
:data:`CODES` pairs, values told apart by their bits; past the caps a row keeps its metric and
value). They are deduplicated once, when the index is first used (a count of the distinct
identities; a filter only when there are duplicates), and sorted. Request-joined rows end up
in :class:`_Requests`: the sorted fingerprints, a code byte a row and a directory of the
fingerprints' top bits (about a byte a row), about 10 bytes a row in all, joined to a page of
records sorted by the same fingerprint (:meth:`OutcomeIndex.join`) in a few vectorised steps,
not a binary search through the whole index per record. The identities are kept until the
first join (rows may be added until then), then freed: an index joined to records is
read-only. Unit-joined rows stay a small frame (the metric by index, the value by code). At
most ``max_metrics`` distinct metric names are analysed; more is an error
(:class:`TooManyMetrics`), not a silent cut.
"""

from __future__ import annotations

import sys
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
    stable_argsort64,
)
from router.analysis.sketches import LazyIdSet
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
        # ident, h, c (17 bytes a row; and m, v when c is ESCAPE) as added, deduplicated and
        # sorted by _finalise into _requests (about 7 bytes a row: see _Requests) and _kept
        # (the identities of its rows, until the first join: queried only when rows are added
        # after a finalise, so past a few million they wait on disk, see LazyIdSet)
        self._req: list[_Batch] = []
        self._requests = _Requests()
        self._kept = LazyIdSet()
        self._codes: dict[tuple[int, int], int] = {}  # (metric index, value bits): code
        self._per_metric: dict[int, int] = {}  # codes a metric has
        self._unit: list[pl.DataFrame] = []  # ident, unit, metric, value, ts
        self._names: list[str] = []
        self._ids: dict[str, int] = {}
        self._final: dict[str, Any] | None = None
        self._sealed = False  # a copy unpickled in a worker: the index only, read-only
        self._joined = False  # joined to records: read-only, the identities freed (join)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (to the processes and Dask workers of :mod:`router.analysis.distribute`)
        as the finished index only: the compact sorted rows (:class:`_Requests`) and the
        unit-joined rows, not the frames it was built from (and not sorted again there)."""
        self._finalise()
        state = self.__dict__.copy()
        state.update(_rows=[], _req=[], _unit=[], _kept=LazyIdSet(), _sealed=True)
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
            part = req.select(
                ident=ident,
                h=rid_hash(pl.col("request_id")),
                m=pl.col("metric").replace_strict(self._ids, return_dtype=pl.UInt16),
                v=pl.col("value"),
            )
            del req
            c = self._encode(part.select("m", "v"))
            batch, repeats = _Batch.of(part, c)
            self._duplicates += repeats
            self._req.append(batch)
        units = df.filter(~by_req)
        if units.height:
            # (gathered: filtered, the columns would keep the whole batch's buffers, the
            # strings' and the floats', about 30 bytes an outcome row of every batch)
            every = pl.int_range(pl.len())
            self._unit.append(units.select(
                ident.alias("ident"), pl.col("unit", "metric", "value", "ts").gather(every)
            ))  # fmt: skip

    def _register(self, name: str) -> None:
        if len(self._names) >= self.max_metrics:
            raise TooManyMetrics(
                f"more than {self.max_metrics} distinct outcome metric names (e.g. "
                f"{', '.join(repr(n) for n in self._names[:3])}, {name!r}); the analysis keeps "
                "at most that many (policy data_quality.max_metrics)"
            )
        self._ids[name] = len(self._names)
        self._names.append(name)

    def _encode(self, mv: pl.DataFrame) -> pl.Series:
        """The code of each row's (metric index ``m``, value ``v``) pair (UInt8): its entry in
        the table of pairs (:data:`CODES` at most, :data:`CODES_PER_METRIC` a metric; values
        told apart by their bits, so -0.0, NaN payloads and infinities come back exactly), or
        :data:`ESCAPE` past those caps (the row's metric and value kept apart then)."""
        key = mv.select("m", b=pl.Series(mv["v"].to_numpy().view(np.int64)))
        c = self._code_of(key)
        if c.null_count():
            new = key.filter(c.is_null()).unique(maintain_order=True)
            new = new.group_by("m", maintain_order=True).head(CODES_PER_METRIC)
            added = False
            for m, b in new.iter_rows():
                if len(self._codes) >= CODES:
                    break
                if self._per_metric.get(m, 0) < CODES_PER_METRIC:
                    self._per_metric[m] = self._per_metric.get(m, 0) + 1
                    self._codes[(m, b)] = len(self._codes)
                    added = True
            if added:
                c = self._code_of(key)
            c = c.fill_null(ESCAPE)
        return c.alias("c")

    def _code_of(self, key: pl.DataFrame) -> pl.Series:
        if not self._codes:
            return pl.repeat(None, key.height, dtype=pl.UInt8, eager=True)
        table = pl.DataFrame(
            [(m, b, c) for (m, b), c in self._codes.items()],
            schema={"m": pl.UInt16(), "b": pl.Int64(), "c": pl.UInt8()},
            orient="row",
        )
        return key.join(table, on=["m", "b"], how="left", maintain_order="left")["c"]

    def _table(self) -> tuple[np.ndarray, np.ndarray]:
        """The metric index and value of each code (:data:`ESCAPE`'s entry unused)."""
        met = np.zeros(CODES + 1, np.uint16)
        bits = np.zeros(CODES + 1, np.int64)
        for (m, b), c in self._codes.items():
            met[c], bits[c] = m, b
        return met, bits.view(np.float64)

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
            self._unit = [units]
            srt = self._sort_requests()
            if srt is not None:
                self._requests = _Requests.of(*srt, *self._table())
            req = self._requests
            metrics: dict[str, dict[str, Any]] = {}
            for m, (n, b) in sorted(req.kinds().items()):
                metrics[self._names[m]] = {"n": n, "binary": b}
            kinds = units.group_by("metric", maintain_order=True).agg(
                pl.len(), pl.col("value").is_in([0.0, 1.0]).all()
            )
            for name, n, b in kinds.iter_rows():
                if name not in self._ids:  # unit-joined metric names count against the cap
                    self._register(name)
                info = metrics.setdefault(name, {"n": 0, "binary": True})
                info["n"] += int(n)
                info["binary"] = info["binary"] and bool(b)
            self._final = {"req": req, "units": self._compact_units(units), "metrics": metrics}
        return self._final

    def _compact_units(self, units: pl.DataFrame) -> pl.DataFrame:
        """The unit-joined rows as held (see :attr:`by_unit`): unit, the metric by index
        (``m``), the value by its code (``c``, as the request-joined rows' values; the value
        itself when some pair has none), ts."""
        mtype = pl.UInt8() if len(self._names) <= 256 else pl.UInt16()
        m = pl.col("metric").replace_strict(self._ids, return_dtype=pl.UInt16)
        df = units.select("unit", m.alias("m"), "value", "ts")
        c = self._encode(df.select("m", v="value"))
        value = "value" if (c == ESCAPE).any() else c
        return df.select("unit", pl.col("m").cast(mtype), value, "ts")

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
        ``[left, right)`` of each record in turn). See :class:`_Requests`."""
        req: _Requests = self._finalise()["req"]
        if not self._joined:  # (read-only from now on: the identities are not needed)
            self._joined, self._kept, self._unit = True, LazyIdSet(), []
        return req.join(rid_hashes)

    def freeze(self) -> None:
        """Make the index read-only, as the first :meth:`join` does: from then on
        :meth:`join` may be called from several threads at once."""
        self.join(np.zeros(0, np.int64))

    def _sort_requests(
        self,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
        """The request-joined rows added since the last call (after those sorted then),
        deduplicated (each identity's first occurrence, in the order added) and sorted by
        fingerprint (stable: the rows of one request keep their order), as ``(h, codes,
        esc_m, esc_v)`` (see :func:`_merge`); None when none were added. Each batch was
        deduplicated and sorted as it came (:meth:`_Batch.of`), so this drops the identities
        repeated across batches (:func:`_drop_repeats`, a sixteenth of the identities at a
        time) and merges the sorted batches (:func:`_merge`, a 256th of the rows at a time):
        at 26M rows about 9 bytes a row held twice at most, where a sort of one frame of them
        all held three to four times that (measured: the peak of a week's re-fold)."""
        batches, self._req = self._req, []
        if not batches:
            return None
        self._duplicates += _drop_repeats(batches, self._kept if len(self._kept) else None)
        for b in batches:  # the identities wait for rows added later (on disk past a few M)
            for i in range(0, b.ident.size, KEPT_BATCH):
                self._kept.add_new(b.ident[i : i + KEPT_BATCH].view(np.int64))
            b.ident = np.zeros(0, np.uint64)
        if self._requests.n:  # (rows added after a finalise: rare; theirs come first)
            batches.insert(0, _Batch.of_requests(self._requests))
        return _merge(batches)

    @property
    def rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sorted (request-id fingerprint, metric index, value) arrays (decoded: a copy)."""
        req: _Requests = self._finalise()["req"]
        return req.decode()

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
        """Unit-joined rows: unit, metric, value, ts (built at each call: the index holds
        the metric by index)."""
        units: pl.DataFrame = self._finalise()["units"]
        names = pl.Series("metric", self._names, pl.String())
        if "c" in units.columns:
            value = pl.Series("value", self._table()[1]).gather(units["c"].cast(pl.UInt32))
        else:
            value = units["value"]
        return units.select(
            "unit", names.gather(units["m"].cast(pl.UInt32)).alias("metric"), value, "ts"
        )

    @property
    def by_request_total(self) -> int:
        return int(self._finalise()["req"].n)

    @property
    def metrics(self) -> dict[str, dict[str, Any]]:
        """``{name: {"n": rows, "binary": all values 0 or 1}}`` over both kinds of rows."""
        metrics: dict[str, dict[str, Any]] = self._finalise()["metrics"]
        return metrics

    @property
    def valid(self) -> int:
        return self.by_request_total + self._finalise()["units"].height

    @property
    def duplicate_rows(self) -> int:
        self._finalise()
        return self._duplicates


CODES = 127  # (metric, value) pairs with a code (a row's low 7 bits)
CODES_PER_METRIC = 16  # of them a metric's (a metric of many values does not take them all)
ESCAPE = CODES  # the code of a row whose pair has none (its metric and value kept apart)
RUN = 128  # a row's high bit: the next row has the same fingerprint
_UNIT_SCHEMA: dict[str, pl.DataType] = {"ident": pl.UInt64()} | UNIT_ROWS_SCHEMA
KEPT_BATCH = 1 << 20  # identities handed to the kept set at once (8 MB: see _sort_requests)
_SUPERBLOCK_BITS = 8  # buckets a directory base covers (at most 2**8; fewer when crowded)


class _Requests:
    """The request-joined rows, sorted by request-id fingerprint, in about 10 bytes a row
    (was 18, plus a 4-byte directory, plus a byte a row when some request had several rows):

    - ``h``: the fingerprints (int64);
    - ``codes``: a byte a row, the code of its (metric, value) pair in a table of at most
      :data:`CODES` pairs (``table_m``/``table_v``: labels and conversions have a few values
      each), or :data:`ESCAPE` (the metric and value are then in ``esc_m``/``esc_v`` at the
      row's rank in ``esc_pos``); its high bit (:data:`RUN`) set when the next row has the
      same fingerprint;
    - a directory of the fingerprints' top ``bits`` bits (:func:`_bucket`; ``2**bits`` buckets
      for ``2**bits`` to ``2**(bits + 1)`` rows): bucket ``i``'s rows start at
      ``base[i >> shift] + off[i]`` (a byte a bucket, and an int32 a superblock of
      ``2**shift`` buckets: about a byte a row, was 4).

    The join (:meth:`join`) starts each fingerprint at the first row of its bucket and steps
    on while the rows are below it: a few vectorised passes, each over fewer fingerprints,
    not a binary search of the whole index per record."""

    def __init__(self) -> None:
        self.n = 0
        self.bits = 1
        self.shift = 0
        self.h = np.zeros(0, np.int64)  # (empty when split: see of)
        self.split = False
        self.lo = np.zeros(0, np.uint32)
        self.mid = np.zeros(0, np.uint8)
        self.base = np.zeros(2, np.int32)
        self.off = np.zeros(3, np.uint8)
        self.codes = np.zeros(0, np.uint8)
        self.runs = False  # (some fingerprint has several rows)
        self.table_m = np.zeros(CODES + 1, np.uint16)
        self.table_v = np.zeros(CODES + 1, np.float64)
        self.esc_pos = np.zeros(0, np.int64)
        self.esc_m = np.zeros(0, np.uint16)
        self.esc_v = np.zeros(0, np.float64)

    @classmethod
    def of(cls, h: np.ndarray, codes: np.ndarray, esc_m: np.ndarray, esc_v: np.ndarray,
           table_m: np.ndarray, table_v: np.ndarray,
           bits: int | None = None) -> _Requests:  # fmt: skip
        """From the rows sorted by fingerprint: ``h``, ``codes`` and the metric and value of
        the rows coded :data:`ESCAPE`, in their order (``codes`` is taken, not copied).
        ``bits``: the directory's (default: about log2 of the rows). From
        :data:`SPLIT_BITS` on, a row's top bits are its bucket's, and only its low 40 are
        held (5 bytes a row, not 8: from about 17M rows)."""
        self = cls()
        n = self.n = h.size
        self.table_m, self.table_v = table_m, table_v
        self.codes = codes
        if n > 1:
            same = h[1:] == h[:-1]
            self.runs = bool(same.any())
            if self.runs:
                self.codes[:-1] |= same.view(np.uint8) << 7
            del same
        if esc_m.size:
            self.esc_pos = np.flatnonzero(self.codes & ~np.uint8(RUN) == ESCAPE)
            self.esc_m, self.esc_v = esc_m.astype(np.uint16), esc_v.astype(np.float64)
        bits = self.bits = bits or max(1, min(32, int(n).bit_length() - 1))
        starts = _bucket_starts(h, bits)
        shift = min(bits, _SUPERBLOCK_BITS)  # (the largest whose offsets fit a byte)
        while shift and (starts[(1 << shift) - 1 :: 1 << shift]
                         - starts[: -1 : 1 << shift]).max() > 255:  # fmt: skip
            shift -= 1
        base = starts[:: 1 << shift].copy()
        starts[:-1].reshape(-1, 1 << shift)[:] -= base[:-1, None]
        starts[-1] = 0
        self.shift, self.base = shift, base.astype(np.int32 if n < 2**31 else np.int64)
        self.off = starts.astype(np.uint8)
        del starts
        if bits >= SPLIT_BITS:  # the top bits are the bucket's: 5 bytes a row, not 8
            self.split = True
            self.lo, self.mid = _low40(h)
        else:
            self.h = h
        return self

    def _starts(self, b: np.ndarray) -> np.ndarray:
        return self.base[b >> self.shift] + self.off[b]

    def join(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(record, metric index, value)`` of the rows of fingerprints ``q``: each starts
        at the first row of its bucket and steps on while the rows are below it, within its
        bucket (whose rows share its top bits: compared by their low 40 bits when the index
        holds only those, see :meth:`of`)."""
        n = self.n
        if not n or not q.size:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64)
        q = np.ascontiguousarray(q, dtype=np.int64)
        b = _bucket(q, self.bits)
        at, end = self._starts(b), self._starts(b + 1)
        if self.split:  # (rows and fingerprints by their low 40 bits: one order in a bucket)
            lo, mid = _low40(q)
            key = (mid.astype(np.int64) << 32) | lo
            del lo, mid
        else:
            key = q
        idx = np.arange(q.size)
        codes = self.codes
        recs: list[np.ndarray] = []
        pos: list[np.ndarray] = []
        go = at < end
        if not go.all():
            idx, at, end, key = idx[go], at[go], end[go], key[go]
        while idx.size:
            if self.split:
                hv = (self.mid[at].astype(np.int64) << 32) | self.lo[at]
            else:
                hv = self.h[at]
            eq = hv == key
            go = hv < key
            if eq.any():
                recs.append(idx[eq])
                pos.append(at[eq])
                if self.runs:  # (on to the fingerprint's next row)
                    go |= eq & (codes[at] >= RUN)
            at += 1
            go &= at < end
            if not go.all():
                idx, at, end, key = idx[go], at[go], end[go], key[go]
        return self._decoded(recs, pos)

    def _decoded(self, recs: list[np.ndarray],
                 pos: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
        if not recs:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64)
        row_of, where = (recs[0], pos[0]) if len(recs) == 1 else _by_record(recs, pos)
        c = self.codes[where] & np.uint8(CODES)
        met, val = self.table_m[c].astype(np.int64), self.table_v[c]
        if self.esc_pos.size:
            esc = np.flatnonzero(c == ESCAPE)
            if esc.size:
                k = np.searchsorted(self.esc_pos, where[esc])
                met[esc], val[esc] = self.esc_m[k], self.esc_v[k]
        return row_of, met, val

    def decode(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(fingerprint, metric index, value)`` arrays of the rows (copies)."""
        c = self.codes & np.uint8(CODES)
        met, val = self.table_m[c], self.table_v[c]
        met[self.esc_pos], val[self.esc_pos] = self.esc_m, self.esc_v
        return self.fingerprints(), met, val

    def fingerprints(self) -> np.ndarray:
        """The rows' fingerprints (a copy; put together again when split)."""
        if not self.split:
            return self.h.copy()
        starts = self._starts(np.arange((1 << self.bits) + 1))
        top = np.repeat(np.arange(1 << self.bits, dtype=np.int64) - (1 << (self.bits - 1)),
                        np.diff(starts)) << (64 - self.bits)  # fmt: skip
        return top | (self.mid.astype(np.int64) << 32) | self.lo

    def kinds(self) -> dict[int, tuple[int, bool]]:
        """``{metric index: (rows, all values 0 or 1)}``."""
        out: dict[int, tuple[int, bool]] = {}
        counts = np.bincount(self.codes & np.uint8(CODES), minlength=CODES + 1)
        for c in np.flatnonzero(counts[:CODES]):
            m, v = int(self.table_m[c]), float(self.table_v[c])
            n, b = out.get(m, (0, True))
            out[m] = (n + int(counts[c]), b and v in (0.0, 1.0))
        if self.esc_pos.size:
            em = pl.DataFrame({"m": self.esc_m, "v": self.esc_v})
            binary = pl.col("v").is_in([0.0, 1.0]).all()
            for m, k, b in em.group_by("m").agg(pl.len(), binary).iter_rows():
                n, was = out.get(m, (0, True))
                out[m] = (n + int(k), was and bool(b))
        return out


def _bucket(h: np.ndarray, bits: int) -> np.ndarray:
    """The directory bucket of signed fingerprints: their top ``bits`` bits, ordered as the
    fingerprints are (the sign bit flipped)."""
    return (h >> (64 - bits)) + (1 << (bits - 1))


_BUCKET_CHUNK = 1 << 22  # sorted fingerprints bucketed at once by _bucket_starts
SPLIT_BITS = 24  # from this many directory bits on, rows hold their fingerprints' low 40
# (64 - 24 = 40: the bits a bucket does not fix)


def _low40(h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The low 32 bits (uint32) and the next 8 (uint8) of int64 fingerprints, copied from
    their bytes (no int64 temporary of them all)."""
    if sys.byteorder == "little":
        h = np.ascontiguousarray(h)
        return h.view(np.uint32)[0::2].copy(), h.view(np.uint8)[4::8].copy()
    return (h & 0xFFFFFFFF).astype(np.uint32), ((h >> 32) & 0xFF).astype(np.uint8)


def _bucket_starts(h: np.ndarray, bits: int) -> np.ndarray:
    """Where each of the ``2**bits`` buckets begins in the sorted fingerprints ``h`` (and
    ``h.size`` at the end): counted :data:`_BUCKET_CHUNK` rows at a time, each chunk's buckets
    a contiguous range (``h`` is sorted), so the only array of the directory's size is the
    result (int32 while the rows allow: at 26M rows 64 MB, where a bincount of every row's
    bucket briefly held 200 MB of buckets and two 128 MB arrays)."""
    starts = np.zeros((1 << bits) + 1, np.int32 if h.size < 2**31 else np.int64)
    for i in range(0, h.size, _BUCKET_CHUNK):
        b = _bucket(h[i : i + _BUCKET_CHUNK], bits)
        lo = int(b[0])
        seg = starts[lo + 1 : int(b[-1]) + 2]
        np.add(seg, np.bincount(b - lo), out=seg, casting="unsafe")
    np.cumsum(starts, out=starts)
    return starts


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


class _Batch:
    """A batch of request-joined rows as added: its identities' repeats dropped (the first
    kept), sorted by fingerprint (stable), in arrays: ``h``, ``c`` (codes), ``ident`` (until
    the batches are merged) and, when some row is coded :data:`ESCAPE`, every row's ``m`` and
    ``v`` (else None)."""

    __slots__ = ("c", "h", "ident", "m", "v")

    def __init__(self, h: np.ndarray, c: np.ndarray, ident: np.ndarray,
                 m: np.ndarray | None, v: np.ndarray | None) -> None:  # fmt: skip
        self.h, self.c, self.ident, self.m, self.v = h, c, ident, m, v

    @classmethod
    def of(cls, part: pl.DataFrame, c: pl.Series) -> tuple[_Batch, int]:
        """From ``ident``, ``h``, ``m``, ``v`` and the codes ``c``; and the repeats dropped."""
        ident = part["ident"]
        keep = None
        repeats = 0
        if ident.n_unique() < ident.len():  # (rare: a hash count is half a first-distinct)
            first = ident.is_first_distinct().to_numpy()
            repeats = int(first.size - np.count_nonzero(first))
            keep = np.flatnonzero(first)
        h = part["h"].to_numpy()
        order = stable_argsort64(h if keep is None else h[keep])
        if keep is not None:
            order = keep[order]

        def take(a: np.ndarray) -> np.ndarray:
            return np.ascontiguousarray(a[order])

        codes = take(c.to_numpy())
        esc = bool((codes == ESCAPE).any())
        m = take(part["m"].to_numpy()) if esc else None
        v = take(part["v"].to_numpy()) if esc else None
        return cls(take(h), codes, take(part["ident"].to_numpy()), m, v), repeats

    @classmethod
    def of_requests(cls, req: _Requests) -> _Batch:
        """The rows of a finished index (sorted and deduplicated already)."""
        h, met, val = req.decode()
        return cls(h, req.codes & np.uint8(CODES), np.zeros(0, np.uint64), met, val)

    def drop(self, rows: np.ndarray) -> None:
        keep = np.ones(self.h.size, dtype=bool)
        keep[rows] = False
        for name in self.__slots__:
            a = getattr(self, name)
            if a is not None and a.size == keep.size:
                setattr(self, name, a[keep])


_GROUPS = 16  # identities checked for repeats across batches a sixteenth at a time


def _drop_repeats(batches: list[_Batch], kept: LazyIdSet | None) -> int:
    """Drop the rows whose identity an earlier batch holds (or ``kept``, rows finalised
    before); returns how many. Batches hold no repeats of their own (:meth:`_Batch.of`).
    One count of distinct identities per sixteenth (by their low bits) finds there are none,
    as it mostly does; only a sixteenth with repeats is searched for them."""
    drops: list[list[np.ndarray]] = [[] for _ in batches]
    if kept is not None:
        for k, b in enumerate(batches):
            drops[k].append(np.flatnonzero(kept.contains(b.ident.view(np.int64))))
    if len(batches) > 1:
        # each batch's rows by group (the identity's low bits): one radix sort a batch
        low = np.uint64(_GROUPS - 1)
        by_group, bounds = [], []
        for b in batches:
            grp = (b.ident & low).astype(np.uint8)
            o = np.argsort(grp, kind="stable")
            by_group.append(o)
            bounds.append(np.searchsorted(grp[o], np.arange(_GROUPS + 1)))
        for g in range(_GROUPS):
            where = [o[e[g] : e[g + 1]] for o, e in zip(by_group, bounds, strict=True)]
            ids = np.concatenate([b.ident[w] for b, w in zip(batches, where, strict=True)])
            col = pl.Series(ids)
            if col.n_unique() == ids.size:
                continue
            again = np.flatnonzero(~col.is_first_distinct().to_numpy())
            starts = np.cumsum([0] + [w.size for w in where])
            which = np.searchsorted(starts, again, side="right") - 1
            for k in np.unique(which):
                drops[k].append(where[k][again[which == k] - starts[k]])
    n = 0
    for b, d in zip(batches, drops, strict=True):
        rows = np.unique(np.concatenate(d)) if d else np.zeros(0, np.int64)
        if rows.size:
            b.drop(rows)
            n += int(rows.size)
    return n


def _merge(batches: list[_Batch]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The rows of the sorted batches in one stable order by fingerprint (a batch's rows after
    an earlier batch's of the same fingerprint), as ``(h, codes, esc_m, esc_v)``: written a
    256th at a time (the fingerprints' top 8 bits), each from the same range of every
    batch, into arrays made once (the batches and the result: about 18 bytes a row)."""
    n = sum(b.h.size for b in batches)
    h = np.empty(n, np.int64)
    codes = np.empty(n, np.uint8)
    esc_m: list[np.ndarray] = []
    esc_v: list[np.ndarray] = []
    edges = (np.arange(1, 256, dtype=np.int64) - 128) << 56  # (signed: top bits ascending)
    cuts = [np.concatenate(([0], np.searchsorted(b.h, edges), [b.h.size])) for b in batches]
    at = 0
    for k in range(256):
        spans = [(b, int(c[k]), int(c[k + 1])) for b, c in zip(batches, cuts, strict=True)]
        spans = [(b, lo, hi) for b, lo, hi in spans if hi > lo]
        if not spans:
            continue
        hh = np.concatenate([b.h[lo:hi] for b, lo, hi in spans])
        cc = np.concatenate([b.c[lo:hi] for b, lo, hi in spans])
        order = np.argsort(hh, kind="stable")
        m = hh.size
        h[at : at + m] = hh[order]
        codes[at : at + m] = cc = cc[order]
        esc = np.flatnonzero(cc == ESCAPE)
        if esc.size:
            mm = np.concatenate([b.m[lo:hi] if b.m is not None else np.zeros(hi - lo, np.uint16)
                                 for b, lo, hi in spans])  # fmt: skip
            vv = np.concatenate([b.v[lo:hi] if b.v is not None else np.zeros(hi - lo)
                                 for b, lo, hi in spans])  # fmt: skip
            esc_m.append(mm[order[esc]])
            esc_v.append(vv[order[esc]])
        at += m
    batches.clear()
    return (h, codes, np.concatenate(esc_m) if esc_m else np.zeros(0, np.uint16),
            np.concatenate(esc_v) if esc_v else np.zeros(0))  # fmt: skip
