"""Captured records and outcomes (DESIGN.md v1), decoded into columnar frames (pure; no I/O).

``polars`` parses a whole page of JSON lines at once in native code into typed columns, so the
analyzer never builds a Python object per record. Open-ended parts of a record (segment,
prediction, contract, fields) are read as their JSON text (polars serialises nested values it
is told are strings), which keeps every key: nothing a later writer adds is dropped. A page
that polars rejects (malformed JSON, a wrong type) is decoded line by line with ``msgspec``;
bad lines are counted and the valid ones re-encoded and parsed again, so one bad line costs
its page the slow path, never the analysis.

Request ids are fingerprinted with polars' 64-bit hash (fixed seed) for deduplication and for
the outcome join; records and outcomes are hashed by the same function.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgspec
import orjson
import polars as pl

from router.analysis.schema import Record, decode_record, record_from_dict
from router.outcomes import validate_outcome

HASH_SEED = 0x5EED_CAFE


def _side(prediction: pl.DataType) -> pl.Struct:
    return pl.Struct(
        {"status": pl.Int64, "latency_ms": pl.Float64, "prediction": prediction, "error": pl.String}
    )


def record_schema(numeric: bool = False, fields: bool = True) -> dict[str, pl.DataType]:
    """The columns read from a record. Predictions are JSON text in general; ``numeric``
    (score and value kinds) reads them as floats, which parses faster, and a page where some
    prediction is not a number falls back to the general schema. ``fields`` (captured inputs)
    are read only when drift is analysed."""
    side = _side(pl.Float64() if numeric else pl.String())
    schema: dict[str, pl.DataType] = {
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
    }
    if fields:
        schema["fields"] = pl.String()
    return schema


RECORD_SCHEMA = record_schema()
OUTCOME_SCHEMA: dict[str, pl.DataType] = {
    "request_id": pl.String(),
    "unit": pl.String(),
    "metric": pl.String(),
    "value": pl.Float64(),
    "ts": pl.Float64(),
    "experiment": pl.String(),
}
_encode = msgspec.json.encode


def empty(schema: dict[str, pl.DataType]) -> pl.DataFrame:
    return pl.DataFrame(schema=schema)


def rid_hash(col: pl.Expr | pl.Series) -> Any:
    """64-bit fingerprints of request ids (signed, for numpy), the same for records and
    outcomes."""
    return col.hash(HASH_SEED).reinterpret(signed=True)


def _read(data: bytes, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    if not data or data.isspace():  # (isspace stops at the first other byte; strip copies)
        return empty(schema)
    return pl.read_ndjson(data, schema=schema)


def parse_records(
    data: bytes, schema: dict[str, pl.DataType] = RECORD_SCHEMA
) -> tuple[pl.DataFrame, int]:
    """Records of a page of JSON lines, and the number of lines that are not valid records."""
    try:
        return _read(data, schema), 0
    except pl.exceptions.PolarsError:
        pass
    if schema is not RECORD_SCHEMA:
        try:
            return _read(data, RECORD_SCHEMA), 0
        except pl.exceptions.PolarsError:
            pass
    good: list[bytes] = []
    bad = 0
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        rec = decode_record(line)
        if rec is None:
            bad += 1
        else:
            good.append(_encode(rec))
    df, more = _reparse(good, RECORD_SCHEMA)
    return df, bad + more


def record_columns(df: pl.DataFrame) -> pl.DataFrame:
    """The flat columns the accumulator folds, from a parsed page: request-id fingerprint,
    variant (0 champion, 1 challenger, null otherwise), each side's presence, error flag,
    latency, status and prediction. Pure polars, so it runs off the folding thread."""
    champ, chall = pl.col("champion"), pl.col("challenger")
    cst, hst = champ.struct.field("status"), chall.struct.field("status")
    served = pl.col("served")
    return df.select(
        rid=pl.col("request_id"),
        h=rid_hash(pl.col("request_id")),
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
        fields=pl.col("fields") if "fields" in df.columns else pl.lit(None, pl.String),
    )


@dataclass
class Page:
    """A page of records ready to fold: :func:`record_columns` sorted by request-id
    fingerprint (stable, so the first of duplicates stays first), with ``segc`` numbering each
    row's segment JSON (0: none, i: ``segments[i - 1]``), and the lines that were invalid."""

    cols: pl.DataFrame
    segments: list[str]
    invalid: int = 0


def page_of(df: pl.DataFrame, invalid: int = 0) -> Page:
    cols = record_columns(df).sort("h", maintain_order=True)
    segments = cols["seg"].drop_nulls().unique(maintain_order=True).to_list()
    code = pl.col("seg").replace_strict(
        segments, list(range(1, len(segments) + 1)), default=0, return_dtype=pl.Int64
    )
    return Page(cols.with_columns(segc=code.fill_null(0)), segments, invalid)


def prepare_records(data: bytes, schema: dict[str, pl.DataType] = RECORD_SCHEMA) -> Page:
    """:func:`parse_records` then :func:`page_of`: all the per-page work that needs no
    accumulator state, done on whichever thread calls it."""
    df, bad = parse_records(data, schema)
    return page_of(df, bad)


def records_frame(records: Iterable[Any]) -> tuple[pl.DataFrame, int]:
    """Records given as dicts (or :class:`Record` structs), validated by the same rules as
    decoded ones; returns the frame and the number of invalid items."""
    good: list[bytes] = []
    bad = 0
    for r in records:
        if type(r) is not Record:
            r = record_from_dict(r)
            if r is None:
                bad += 1
                continue
        good.append(_encode(r))
    df, more = _reparse(good, RECORD_SCHEMA)
    return df, bad + more


def parse_outcomes(data: bytes) -> tuple[pl.DataFrame, int]:
    """Outcome rows of a page of JSON lines (validity of values is checked by the caller) and
    the number of lines that are not outcome objects. A page polars rejects is checked line by
    line with the rules of ``POST /outcomes`` (:func:`router.outcomes.validate_outcome`)."""
    try:
        return _read(data, OUTCOME_SCHEMA), 0
    except pl.exceptions.PolarsError:
        pass
    good: list[bytes] = []
    bad = 0
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            o = orjson.loads(line)
        except orjson.JSONDecodeError:
            o = None
        # the row's own experiment (kept, may be absent) is checked by the caller
        exp = o.get("experiment") if isinstance(o, dict) else None
        row = validate_outcome(o, exp if isinstance(exp, str) and exp else "-", now=0.0)
        if isinstance(row, str):
            bad += 1
            continue
        good.append(orjson.dumps({k: row[k] for k in OUTCOME_SCHEMA} | {"experiment": exp}))
    df, more = _reparse(good, OUTCOME_SCHEMA)
    return df, bad + more


def _reparse(lines: list[bytes], schema: dict[str, pl.DataType]) -> tuple[pl.DataFrame, int]:
    """Parse re-encoded, validated lines; should polars still refuse the page (a value out of
    its range, say), parse line by line and count the refused ones."""
    try:
        return _read(b"\n".join(lines), schema), 0
    except pl.exceptions.PolarsError:
        frames, bad = [], 0
        for line in lines:
            try:
                frames.append(_read(line, schema))
            except pl.exceptions.PolarsError:
                bad += 1
        return (pl.concat(frames) if frames else empty(schema)), bad
