"""Captured records and outcomes (DESIGN.md v1), decoded into columnar frames (pure; no I/O).

``polars`` parses a whole page of JSON lines at once in native code into typed columns, so the
analyzer never builds a Python object per record. Open-ended parts of a record (segment,
prediction, contract, fields) are read as their JSON text (polars serialises nested values it
is told are strings), which keeps every key: nothing a later writer adds is dropped.

**A line's verdict depends on that line only.** A record is valid when polars can read it with
the page's schema and it passes the checks of :func:`_record_problems` (vectorised polars
expressions: version, request id, a plausible ``ts`` in seconds, the served side present,
latencies not negative, the segment an object of strings). A page polars rejects as a whole (a
malformed line, a wrong type) is checked line by line (:mod:`router.analysis.ndjson`, which
mirrors polars' type rules, never stricter); the lines it passes are parsed again by polars
together, and the same vectorised checks run on them. Invalid lines are reported with a reason
``"<field>: <kind>"`` and where they were (:class:`Invalid`).

Request ids are fingerprinted with polars' 64-bit hash (fixed seed) for deduplication and for
the outcome join; records and outcomes are hashed by the same function.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import polars as pl

from router.analysis.ndjson import line_by_line, nonblank, read_lines
from router.capture.records import FUTURE_SLACK_S, RECORD_VERSION, TS_MIN, TS_MS

HASH_SEED = 0x5EED_CAFE
MAX_EXAMPLES = 5  # locations kept per reason


def _side(prediction: pl.DataType, text: bool = False) -> pl.Struct:
    cols: dict[str, pl.DataType] = {
        "status": pl.Int64(), "latency_ms": pl.Float64(), "prediction": prediction,
        "error": pl.String(),
    }  # fmt: skip
    if text:  # the timing of streamed text answers (record additions of issue 15)
        cols |= {"ttfb_ms": pl.Float64(), "duration_ms": pl.Float64(), "events": pl.Int64(),
                 "usage": pl.Struct({"completion_tokens": pl.Int64()})}  # fmt: skip
    return pl.Struct(cols)


def _is_text(schema: dict[str, pl.DataType]) -> bool:
    side = schema.get("champion")
    return isinstance(side, pl.Struct) and any(fl.name == "ttfb_ms" for fl in side.fields)


def record_schema(
    numeric: bool = False, fields: bool = True, text: bool = False
) -> dict[str, pl.DataType]:
    """The columns read from a record. Predictions are JSON text in general; ``numeric``
    (score and value kinds) reads them as floats, which parses faster, and a page where some
    prediction is not a number falls back to the general schema. ``fields`` (captured inputs)
    are read only when drift is analysed. Neither choice changes which lines are valid."""
    side = _side(pl.Float64() if numeric else pl.String(), text)
    schema: dict[str, pl.DataType] = {
        "v": pl.Float64(),
        "request_id": pl.String(),
        "ts": pl.Float64(),
        "served": pl.String(),
        "experiment": pl.String(),
        "unit": pl.String(),
        "mirrored": pl.Boolean(),
        "segment": pl.String(),
        "champion": side,
        "challenger": side,
        "contract": pl.String(),
        "champion_repeat": side,  # the noise floor's second champion answer (when sampled)
        "contract_repeat": pl.String(),
        # additions of A/B/n (issue 16); absent in older records (null)
        "variant": pl.String(),
        "arm": pl.String(),
        "forced": pl.Boolean(),
        "shadows": pl.String(),
        "mirror_skipped": pl.String(),
    }
    if fields:
        schema["fields"] = pl.String()
    return schema


RECORD_SCHEMA = record_schema()
OUTCOME_SCHEMA: dict[str, pl.DataType] = {
    "id": pl.String(),
    "request_id": pl.String(),
    "unit": pl.String(),
    "metric": pl.String(),
    "value": pl.Float64(),
    "ts": pl.Float64(),
    "experiment": pl.String(),
}


def rid_hash(col: pl.Expr | pl.Series) -> Any:
    """64-bit fingerprints of request ids (signed, for numpy), the same for records and
    outcomes."""
    return col.hash(HASH_SEED).reinterpret(signed=True)


# ------------------------------------------------------------------ where and why
@dataclass(frozen=True)
class Chunk:
    """A page of JSON lines and how to name its lines in a report: ``"line 17"`` of a file
    (``first_line`` is the file line of the page's first line), or ``"<label> <name>"`` with a
    name per line (``names``: stream entry ids, items of an in-memory list)."""

    data: bytes
    first_line: int = 1
    names: Sequence[str | bytes] | None = None  # (stream ids as the client returns them)
    label: str = "line"

    def where(self, i: int) -> str:
        if self.names is None:
            return f"{self.label} {self.first_line + i}"
        name = self.names[i] if i < len(self.names) else "?"
        return f"{self.label} {name.decode() if isinstance(name, bytes) else name}"


@dataclass
class Invalid:
    """Invalid lines by reason (``"<field>: <kind>"``): how many, and the first few places."""

    counts: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def add(self, reason: str, where: str | None = None, n: int = 1) -> None:
        self.counts[reason] += n
        if where is not None:
            ex = self.examples.setdefault(reason, [])
            if len(ex) < MAX_EXAMPLES:
                ex.append(where)

    def merge(self, o: Invalid) -> None:
        self.counts.update(o.counts)
        for reason, places in o.examples.items():
            ex = self.examples.setdefault(reason, [])
            ex.extend(places[: MAX_EXAMPLES - len(ex)])

    def rows(self) -> list[dict[str, Any]]:
        """``[{field, kind, count, examples}]``, the most frequent reason first."""
        out = []
        for reason, n in sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0])):
            fld, _, kind = reason.partition(": ")
            out.append({"field": fld, "kind": kind, "count": n,
                        "examples": list(self.examples.get(reason, []))})  # fmt: skip
        return out


# ------------------------------------------------------------------ the verdict of a line
def _record_problems(df: pl.DataFrame, now: float, segments: list[str] | None = None,
                     ) -> tuple[pl.Series | None, list[str]]:  # fmt: skip
    """The first problem of each parsed record (``"<field>: <kind>"``, null when valid), or
    None when every record is valid; and the page's distinct segment texts (first seen first;
    ``segments`` when known). A boolean pass over the page first: the reasons are spelled out
    only for a page that fails."""
    v, rid, ts, served = pl.col("v"), pl.col("request_id"), pl.col("ts"), pl.col("served")
    champ, chall = pl.col("champion"), pl.col("challenger")
    contract = pl.col("contract")
    c_lat, h_lat = champ.struct.field("latency_ms"), chall.struct.field("latency_ms")
    ok = (
        (v.is_null() | (v == RECORD_VERSION))
        & rid.is_not_null()
        & ts.is_between(TS_MIN, min(TS_MS, now + FUTURE_SLACK_S), closed="left")
        & (((served == "champion") & champ.is_not_null())
           | ((served == "challenger") & chall.is_not_null()))
        & ~(c_lat < 0).fill_null(False)
        & ~(h_lat < 0).fill_null(False)
        & (contract.is_null() | contract.str.starts_with("{"))
    ).fill_null(False)  # fmt: skip
    if segments is None:
        segs = df["segment"]
        segments = (
            segs.drop_nulls().unique(maintain_order=True).to_list()
            if segs.null_count() < df.height
            else []
        )
    bad_segs = [t for t in segments if not _segment_ok(t)]
    if not bad_segs and df.select(ok.all()).item():
        return None, segments
    side_missing = pl.when(served == "champion").then(champ.is_null()).otherwise(chall.is_null())
    reason = (
        pl.when(v.is_not_null() & (v != RECORD_VERSION))
        .then(pl.lit("v: unsupported version (only 1)"))
        .when(rid.is_null())
        .then(pl.lit("request_id: missing"))
        .when(ts.is_null())
        .then(pl.lit("ts: missing"))
        .when(ts >= TS_MS)
        .then(pl.lit("ts: in milliseconds (or finer), not seconds"))
        .when(ts < TS_MIN)
        .then(pl.lit("ts: before 2000-01-01"))
        .when(ts > now + FUTURE_SLACK_S)
        .then(pl.lit("ts: in the future (over a day after the reader's clock)"))
        .when(served.is_null())
        .then(pl.lit("served: missing"))
        .when(~served.is_in(["champion", "challenger"]))
        .then(pl.lit("served: not champion or challenger"))
        .when(side_missing)
        .then(pl.concat_str(served, pl.lit(": missing for the served side")))
        .when(c_lat < 0)
        .then(pl.lit("champion.latency_ms: negative"))
        .when(h_lat < 0)
        .then(pl.lit("challenger.latency_ms: negative"))
        .when(contract.is_not_null() & ~contract.str.starts_with("{"))
        .then(pl.lit("contract: not an object"))
        .when(pl.col("segment").is_in(bad_segs))
        .then(pl.lit("segment: not an object of strings"))
    )
    return df.select(reason.alias("why")).to_series(), segments


def _segment_ok(text: str) -> bool:
    try:
        d = orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return isinstance(d, dict) and all(isinstance(x, str) for x in d.values())


def parse_records(
    data: bytes, schema: dict[str, pl.DataType] = RECORD_SCHEMA, now: float | None = None
) -> tuple[pl.DataFrame, list[tuple[int, str]]]:
    """The valid records of a page of JSON lines, and ``(line index, reason)`` of each
    invalid line (indices count every line of ``data``, blank ones too). ``now`` (default: the
    clock) judges timestamps in the future."""
    df, bad, _segments = _parse_records(data, schema, now)
    return df, bad


def _parse_records(
    data: bytes, schema: dict[str, pl.DataType], now: float | None
) -> tuple[pl.DataFrame, list[tuple[int, str]], list[str] | None]:
    """:func:`parse_records`, and the distinct segment texts of the valid records (None when
    some records were dropped: :func:`page_of` finds them again)."""
    now = time.time() if now is None else now
    rows: list[int] | None = None  # line index of each row, when not simply the non-blank lines
    bad: list[tuple[int, str]] = []
    try:
        df = read_lines(data, schema)
    except pl.exceptions.PolarsError:
        general = record_schema(numeric=False, fields="fields" in schema, text=_is_text(schema))
        try:
            df = read_lines(data, general)
        except pl.exceptions.PolarsError:
            df, rows, bad = line_by_line(data, general)
    why, segments = _record_problems(df, now)
    if why is None:
        return df, sorted(bad), segments
    if rows is None:
        rows = nonblank(data.split(b"\n"))
        if len(rows) != df.height:  # polars and bytes.strip disagree on a blank line
            df, rows, bad = line_by_line(
                data, record_schema(False, "fields" in schema, _is_text(schema))
            )
            why, segments = _record_problems(df, now)
            if why is None:
                return df, sorted(bad), segments
    bad_rows = why.is_not_null()
    for i, reason in zip(bad_rows.arg_true().to_list(), why.filter(bad_rows).to_list(),
                         strict=True):  # fmt: skip
        bad.append((rows[i], reason))
    bad.sort()
    return df.filter(~bad_rows), bad, None


def record_columns(df: pl.DataFrame) -> pl.DataFrame:
    """The flat columns the accumulator folds, from a page of valid records: request-id
    fingerprint, a fingerprint of the request id with the record's content (``k``: a reused
    request id with another ``ts``, unit or variant is a conflict, not a duplicate), variant
    (0 champion, 1 challenger), each side's presence, error flag, latency, status and
    prediction. Pure polars, so it runs off the folding thread."""
    champ, chall = pl.col("champion"), pl.col("challenger")
    cst, hst = champ.struct.field("status"), chall.struct.field("status")
    rep = pl.col("champion_repeat")
    rst = rep.struct.field("status")
    served = pl.col("served")
    text: dict[str, pl.Expr] = {}
    if _is_text(dict(df.schema)):
        for p, side in (("c", champ), ("h", chall)):
            tokens = side.struct.field("usage").struct.field("completion_tokens")
            text[f"{p}ttft"] = side.struct.field("ttfb_ms")
            text[f"{p}dur"] = side.struct.field("duration_ms").fill_null(
                side.struct.field("latency_ms")
            )
            text[f"{p}tok"] = tokens.fill_null(side.struct.field("events")).cast(pl.Float64)
    return df.select(
        rid=pl.col("request_id"),
        h=rid_hash(pl.col("request_id")),
        k=(
            pl.col("request_id").hash(HASH_SEED)
            ^ pl.col("ts").hash(HASH_SEED + 1)
            ^ pl.col("unit").hash(HASH_SEED + 2)
            ^ served.hash(HASH_SEED + 3)
        ).reinterpret(signed=True),
        ts=pl.col("ts"),
        v=pl.when(served == "champion").then(0).when(served == "challenger").then(1).cast(pl.Int8),
        exp=pl.col("experiment"),
        unit=pl.col("unit"),
        mirrored=pl.col("mirrored").fill_null(False),
        seg=pl.col("segment"),
        c_in=champ.is_not_null(),
        h_in=chall.is_not_null(),
        ce=champ.struct.field("error").is_not_null() | cst.is_null() | (cst >= 500),
        he=chall.struct.field("error").is_not_null() | hst.is_null() | (hst >= 500),
        cl=champ.struct.field("latency_ms"),
        hl=chall.struct.field("latency_ms"),
        cs=cst,
        hs=hst,
        cp=champ.struct.field("prediction"),
        hp=chall.struct.field("prediction"),
        contract=pl.col("contract"),
        r_in=pl.col("champion_repeat").is_not_null(),
        re=rep.struct.field("error").is_not_null() | rst.is_null() | (rst >= 500),
        rl=rep.struct.field("latency_ms"),
        rp=rep.struct.field("prediction"),
        contract_r=pl.col("contract_repeat"),
        fields=pl.col("fields") if "fields" in df.columns else pl.lit(None, pl.String),
        **text,
        # A/B/n: the served variant's name, the name of the challenger in ``challenger``, a
        # forced request, further mirrored challengers (JSON text); see router.analysis.arms
        vn=pl.coalesce(_opt(df, "variant"), served),
        arm=pl.when(chall.is_not_null()).then(
            pl.coalesce(_opt(df, "arm"), pl.lit("challenger"))
        ),
        forced=_opt(df, "forced", pl.Boolean).fill_null(False),
        shadows=_opt(df, "shadows"),
        skipped=_opt(df, "mirror_skipped"),
    )


def _opt(df: pl.DataFrame, name: str, dtype: Any = pl.String) -> pl.Expr:
    return pl.col(name) if name in df.columns else pl.lit(None, dtype)


@dataclass
class Page:
    """A page of valid records ready to fold: :func:`record_columns` sorted by request-id
    fingerprint (stable, so the first of duplicates stays first), with ``segc`` numbering each
    row's segment JSON (0: none, i: ``segments[i - 1]``), and the page's invalid lines."""

    cols: pl.DataFrame
    segments: list[str]
    rejected: Invalid = field(default_factory=Invalid)
    experiments: list[str] = field(default_factory=list)  # the distinct experiment names
    skipped: list[tuple[str, str]] = field(default_factory=list)  # unreadable (file, reason)
    # work done on the parse thread that no accumulator state enters (accumulate.prefold);
    # valid for ``cols`` only as they are (an accumulator that filters rows does it again)
    pre: Any = None
    arms: Any = None  # the same for the arm set (router.analysis.arms.prefold_arms)
    source_bytes: int = 0  # the size of the archive files read into it (0: not files)

    @property
    def invalid(self) -> int:
        return self.rejected.total


def page_of(
    df: pl.DataFrame, rejected: Invalid | None = None, segments: list[str] | None = None,
    codes: np.ndarray | None = None,
) -> Page:  # fmt: skip
    """The :class:`Page` of valid records ``df`` (``segments``: its distinct segment texts in
    first-seen order, when known; ``codes``: each row's index into them, -1 for none)."""
    cols = record_columns(df)
    if segments is None:
        segments = df["segment"].drop_nulls().unique(maintain_order=True).to_list()
    if codes is not None and segments is not None:
        cols = _sorted_by_h(cols.with_columns(pl.Series("segc", codes.astype(np.int64) + 1)))
    else:
        cols = _sorted_by_h(cols)
        code = pl.col("seg").replace_strict(
            segments, list(range(1, len(segments) + 1)), default=0, return_dtype=pl.Int64
        )
        cols = cols.with_columns(segc=code.fill_null(0))
    experiments = cols["exp"].drop_nulls().unique().to_list()
    return Page(cols, segments, rejected or Invalid(), experiments)


def _sorted_by_h(cols: pl.DataFrame) -> pl.DataFrame:
    """The rows sorted by request-id fingerprint ``h``, stably (the first of duplicates stays
    first). A stable radix sort of the top 16 bits, then a stable sort of the nearly sorted
    fingerprints (timsort: runs), then one gather: about a third of polars' stable arg-sort."""
    h = cols["h"]
    if cols.height < 2 or h.null_count():
        # (one thread: the pages are prepared two at a time already, and polars' own threads
        # cost a fifth more CPU here for no gain)
        return cols.sort("h", maintain_order=True, multithreaded=False)
    return cols[stable_argsort64(h.to_numpy())]


def stable_argsort64(v: np.ndarray) -> np.ndarray:
    """``np.argsort(v, kind="stable")`` of 64-bit integers whose top bits are spread (hashes):
    a stable radix sort of the top 16 bits, then a stable sort of the nearly sorted values
    (timsort: runs); measured at 500k values, 30 ms against numpy's 52."""
    v = v.view(np.int64)
    first = np.argsort(((v >> 48) + 32768).astype(np.uint16), kind="stable")
    out: np.ndarray = first[np.argsort(v[first], kind="stable")]
    return out


def prepare_records(
    chunk: bytes | Chunk, schema: dict[str, pl.DataType] = RECORD_SCHEMA, now: float | None = None
) -> Page:
    """:func:`parse_records` then :func:`page_of`: all the per-page work that needs no
    accumulator state, done on whichever thread calls it."""
    if not isinstance(chunk, Chunk):
        chunk = Chunk(chunk)
    df, bad, segments = _parse_records(chunk.data, schema, now)
    rejected = Invalid()
    for i, reason in bad:
        rejected.add(reason, chunk.where(i))
    return page_of(df, rejected, segments)


def prepare_frame(
    df: pl.DataFrame, names: Sequence[str], label: str, now: float | None = None,
    segments: tuple[list[str], np.ndarray] | None = None,
) -> Page:  # fmt: skip
    """A :class:`Page` of records already in columns (``df`` with :func:`record_schema`'s
    columns: an archive file), judged by the same checks as lines of a file; an invalid row
    ``i`` is named ``"<label> <names[i]>"`` (``names[i]`` without a label). ``segments``: the
    distinct segment texts (first seen first) and each row's index into them (-1: none), when
    known (:func:`router.analysis.archive_read.segment_codes`)."""
    now = time.time() if now is None else now
    texts, codes = segments if segments is not None else (None, None)
    why, found = _record_problems(df, now, texts)
    rejected = Invalid()
    if why is None:
        return page_of(df, rejected, found, codes)
    bad_rows = why.is_not_null()
    for i, reason in zip(bad_rows.arg_true().to_list(), why.filter(bad_rows).to_list(),
                         strict=True):  # fmt: skip
        rejected.add(reason, f"{label} {names[i]}" if label else names[i])
    return page_of(df.filter(~bad_rows), rejected)


def check_outcome_frame(df: pl.DataFrame) -> tuple[pl.DataFrame, list[tuple[int, str]]]:
    """The valid rows of outcomes already in columns (:data:`OUTCOME_SCHEMA`), and
    ``(row index, reason)`` of the others (the rules of :func:`parse_outcomes`)."""
    why = _outcome_problems(df)
    if why.null_count() == df.height:
        return df, []
    bad_rows = why.is_not_null()
    bad = list(zip(bad_rows.arg_true().to_list(), why.filter(bad_rows).to_list(), strict=True))
    return df.filter(~bad_rows), bad


def records_chunk(records: Iterable[Any]) -> tuple[Chunk, Invalid]:
    """Records given as dicts (DESIGN.md schema) as a page of JSON lines named ``item N``
    (1-based), so they are judged exactly as lines read from a file; items that cannot be
    written as JSON are invalid at once."""
    lines: list[bytes] = []
    names: list[str] = []
    rejected = Invalid()
    for n, r in enumerate(records, 1):
        try:
            line = orjson.dumps(r)
        except (TypeError, orjson.JSONEncodeError):
            rejected.add("record: not JSON", f"item {n}")
            continue
        lines.append(line.replace(b"\n", b" "))  # (JSON text has no raw newline in a string)
        names.append(str(n))
    return Chunk(b"\n".join(lines), names=names, label="item"), rejected


def _outcome_problems(df: pl.DataFrame) -> pl.Series:
    """The first problem of each parsed outcome row, null when valid (the rules of
    :func:`router.capture.outcomes.validate_outcome`, vectorised; a row's own experiment is the
    caller's concern)."""
    rid, unit, ts, value = pl.col("request_id"), pl.col("unit"), pl.col("ts"), pl.col("value")
    ok = (
        (pl.col("metric").str.len_bytes() > 0)
        & value.is_finite()
        & ((rid.str.len_bytes() > 0) | (unit.str.len_bytes() > 0)).fill_null(False)
        & (ts.is_null() | ((ts >= TS_MIN) & (ts < TS_MS)))
    ).fill_null(False)
    if df.select(ok.all()).item():  # (the reasons are spelled out only for a page that fails)
        return pl.repeat(None, df.height, dtype=pl.String, eager=True).alias("why")
    reason = (
        pl.when(pl.col("metric").is_null() | (pl.col("metric").str.len_bytes() == 0))
        .then(pl.lit("metric: missing"))
        .when(value.is_null())
        .then(pl.lit("value: missing"))
        .when(~value.is_finite())
        .then(pl.lit("value: not a finite number"))
        .when(~((rid.str.len_bytes() > 0) | (unit.str.len_bytes() > 0)).fill_null(False))
        .then(pl.lit("request_id: missing (and no unit to join by)"))
        .when(ts >= TS_MS)
        .then(pl.lit("ts: in milliseconds (or finer), not seconds"))
        .when(ts < TS_MIN)
        .then(pl.lit("ts: before 2000-01-01"))
    )
    return df.select(reason.alias("why")).to_series()


def parse_outcomes(data: bytes) -> tuple[pl.DataFrame, list[tuple[int, str]]]:
    """Valid outcome rows of a page of JSON lines and ``(line index, reason)`` of the others,
    judged line by line exactly as records are (:func:`parse_records`). Rows keep their own
    experiment (may be null): that is the caller's concern."""
    rows: list[int] | None = None
    bad: list[tuple[int, str]] = []
    try:
        df = read_lines(data, OUTCOME_SCHEMA)
    except pl.exceptions.PolarsError:
        df, rows, bad = line_by_line(data, OUTCOME_SCHEMA, "outcome")
    why = _outcome_problems(df)
    if why.null_count() == df.height:
        return df, sorted(bad)
    if rows is None:
        rows = nonblank(data.split(b"\n"))
        if len(rows) != df.height:
            df, rows, bad = line_by_line(data, OUTCOME_SCHEMA, "outcome")
            why = _outcome_problems(df)
    bad_rows = why.is_not_null()
    for i, reason in zip(bad_rows.arg_true().to_list(), why.filter(bad_rows).to_list(),
                         strict=True):  # fmt: skip
        bad.append((rows[i], reason))
    bad.sort()
    return df.filter(~bad_rows), bad
