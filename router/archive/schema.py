"""The Parquet schema of the archive, and stream entries converted into it (pure; no I/O).

One row per stream entry. Every field of the DESIGN.md record (v1) is a column; the two sides
are structs, the segment a ``map<string, string>``, the contract a struct of string lists.
Open-ended values are JSON text: a side's ``prediction`` (any JSON; ``prediction_text`` also
holds it unquoted when it is a JSON string), ``fields`` (captured request inputs).

**Nothing is dropped.** A key the schema does not know (a field a later router adds: issue 15's
per-side timings, say) is kept as JSON text in ``extra`` (top level) or ``<side>.extra``; an
entry whose payload is not a JSON object, or whose known fields have the wrong JSON type, is
kept whole in ``raw`` (its other columns null) and judged by the analyzer like a bad line of a
file. **Schema evolution**: when the record gains a field, the field becomes a new *nullable*
column here (files written earlier simply lack it; every reader fills it with null: DuckDB's
``union_by_name``, :mod:`router.archive.scan`), and :data:`ARCHIVE_SCHEMA_VERSION` grows; a
column is never renamed, retyped or removed. Each file's key-value metadata carries
``shadow_router.archive_schema`` (this version) and ``shadow_router.kind`` (pairs or outcomes).

Bookkeeping columns: ``stream_id`` (``<ms>-<seq>``: the entry's Redis id, unique per stream),
``stream`` (the stream key: one of a hot experiment's shards), ``stored_at`` (when Redis stored
it; the partition's hour comes from it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Any

import msgspec
import orjson
import pyarrow as pa

ARCHIVE_SCHEMA_VERSION = 2  # 2: champion_repeat, contract_repeat, contract.changed
META_VERSION = b"shadow_router.archive_schema"
META_KIND = b"shadow_router.kind"
_NULL = msgspec.Raw(b"null")

_SIDE_KEYS = ("version", "status", "latency_ms", "prediction", "error", "truncated",
              "response_bytes")  # fmt: skip
_RECORD_KEYS = ("v", "experiment", "request_id", "ts", "unit", "bucket", "served", "mirrored",
                "segment", "champion", "challenger", "contract", "champion_repeat",
                "contract_repeat", "fields")  # fmt: skip
_OUTCOME_KEYS = ("v", "id", "experiment", "request_id", "unit", "metric", "value", "ts")

SIDE_TYPE = pa.struct(
    [
        ("version", pa.string()),
        ("status", pa.int32()),
        ("latency_ms", pa.float64()),
        ("prediction", pa.string()),  # JSON text
        ("prediction_text", pa.string()),  # the prediction when it is a JSON string
        ("error", pa.string()),
        ("truncated", pa.bool_()),
        ("response_bytes", pa.int64()),
        ("extra", pa.string()),  # JSON object of keys this schema does not know
    ]
)
CONTRACT_TYPE = pa.struct(
    [("missing", pa.list_(pa.string())), ("extra", pa.list_(pa.string())),
     ("retyped", pa.list_(pa.string())), ("changed", pa.list_(pa.string()))]
)  # fmt: skip
_CONTRACT_KEYS = ("missing", "extra", "retyped", "changed")
_BOOKKEEPING = [
    pa.field("stream_id", pa.string(), nullable=False),
    pa.field("stream", pa.string(), nullable=False),
    pa.field("stored_at", pa.timestamp("ms", tz="UTC"), nullable=False),
]
PAIRS_SCHEMA = pa.schema(
    [
        *_BOOKKEEPING,
        pa.field("v", pa.int16()),
        pa.field("experiment", pa.string()),
        pa.field("request_id", pa.string()),
        pa.field("ts", pa.float64()),
        pa.field("unit", pa.string()),
        pa.field("bucket", pa.int32()),
        pa.field("served", pa.string()),
        pa.field("mirrored", pa.bool_()),
        pa.field("segment", pa.map_(pa.string(), pa.string())),
        pa.field("champion", SIDE_TYPE),
        pa.field("challenger", SIDE_TYPE),
        pa.field("contract", CONTRACT_TYPE),
        pa.field("champion_repeat", SIDE_TYPE),  # v2: the noise floor's second champion answer
        pa.field("contract_repeat", CONTRACT_TYPE),  # v2
        pa.field("fields", pa.string()),  # JSON text
        pa.field("extra", pa.string()),  # JSON object of unknown top-level keys
        pa.field("raw", pa.string()),  # the payload, when it does not fit the columns
    ]
)
OUTCOMES_SCHEMA = pa.schema(
    [
        *_BOOKKEEPING,
        pa.field("v", pa.int16()),
        pa.field("id", pa.string()),
        pa.field("experiment", pa.string()),
        pa.field("request_id", pa.string()),
        pa.field("unit", pa.string()),
        pa.field("metric", pa.string()),
        pa.field("value", pa.float64()),
        pa.field("ts", pa.float64()),
        pa.field("extra", pa.string()),
        pa.field("raw", pa.string()),
    ]
)


def schema_for(kind: str) -> pa.Schema:
    return PAIRS_SCHEMA if kind == "pairs" else OUTCOMES_SCHEMA


def with_metadata(schema: pa.Schema, kind: str) -> pa.Schema:
    return schema.with_metadata(
        {META_VERSION: str(ARCHIVE_SCHEMA_VERSION).encode(), META_KIND: kind.encode()}
    )


class _Misfit(Exception):
    """A known field with a JSON type its column cannot hold."""


def _str(x: Any) -> str | None:
    if x is None or isinstance(x, str):
        return x
    raise _Misfit


def _int(x: Any) -> int | None:
    if x is None:
        return None
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise _Misfit
    if isinstance(x, float):
        if not x.is_integer():
            raise _Misfit
        x = int(x)
    if not -(2**31) <= x < 2**31:
        raise _Misfit
    return x


def _float(x: Any) -> float | None:
    if x is None:
        return None
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise _Misfit
    return float(x)


def _bool(x: Any) -> bool | None:
    if x is None or isinstance(x, bool):
        return x
    raise _Misfit


def _extra(d: dict[str, Any], known: Sequence[str]) -> str | None:
    if len(d) <= len(known) and all(k in known for k in d):
        return None
    return orjson.dumps({k: v for k, v in d.items() if k not in known}).decode()


def _side(d: Any) -> dict[str, Any] | None:
    if d is None:
        return None
    if not isinstance(d, dict):
        raise _Misfit
    pred = d.get("prediction")
    lat = _float(d.get("latency_ms"))
    if lat is not None and not math.isfinite(lat):
        raise _Misfit
    return {
        "version": _str(d.get("version")),
        "status": _int(d.get("status")),
        "latency_ms": lat,
        "prediction": None if pred is None else orjson.dumps(pred).decode(),
        "prediction_text": pred if isinstance(pred, str) else None,
        "error": _str(d.get("error")),
        "truncated": _bool(d.get("truncated")),
        "response_bytes": _int(d.get("response_bytes")),
        "extra": _extra(d, _SIDE_KEYS),
    }


def _segment(d: Any) -> list[tuple[str, str]] | None:
    if d is None:
        return None
    if not isinstance(d, dict) or not all(isinstance(v, str) for v in d.values()):
        raise _Misfit
    return list(d.items())


def _contract(d: Any) -> dict[str, list[str] | None] | None:
    if d is None:
        return None
    if not isinstance(d, dict) or set(d) - set(_CONTRACT_KEYS):
        raise _Misfit
    out: dict[str, list[str] | None] = {}
    for k in _CONTRACT_KEYS:
        items = d.get(k)
        if items is not None and not (
            isinstance(items, list) and all(isinstance(p, str) for p in items)
        ):
            raise _Misfit
        out[k] = items
    return out


def _record_row(d: dict[str, Any]) -> tuple[Any, ...]:
    ts = _float(d.get("ts"))
    if ts is not None and not math.isfinite(ts):
        raise _Misfit
    fields = d.get("fields")
    return (
        _int(d.get("v")),
        _str(d.get("experiment")),
        _str(d.get("request_id")),
        ts,
        _str(d.get("unit")),
        _int(d.get("bucket")),
        _str(d.get("served")),
        _bool(d.get("mirrored")),
        _segment(d.get("segment")),
        _side(d.get("champion")),
        _side(d.get("challenger")),
        _contract(d.get("contract")),
        _side(d.get("champion_repeat")),
        _contract(d.get("contract_repeat")),
        None if fields is None else orjson.dumps(fields).decode(),
        _extra(d, _RECORD_KEYS),
    )


def _outcome_row(d: dict[str, Any]) -> tuple[Any, ...]:
    value, ts = _float(d.get("value")), _float(d.get("ts"))
    unit = d.get("unit")
    if isinstance(unit, int) and not isinstance(unit, bool):
        unit = str(unit)  # (accepted as a number by POST /outcomes)
    return (
        _int(d.get("v")),
        _str(d.get("id")),
        _str(d.get("experiment")),
        _str(d.get("request_id")),
        _str(unit),
        _str(d.get("metric")),
        value,
        ts,
        _extra(d, _OUTCOME_KEYS),
    )


_Int32 = Annotated[int, msgspec.Meta(ge=-(2**31), lt=2**31)]
_Int16 = Annotated[int, msgspec.Meta(ge=-(2**15), lt=2**15)]


class _FastSide(msgspec.Struct, forbid_unknown_fields=True):
    version: str | None = None
    status: _Int32 | None = None
    latency_ms: float | None = None
    prediction: msgspec.Raw = _NULL
    error: str | None = None
    truncated: bool | None = None
    response_bytes: int | None = None


class _FastContract(msgspec.Struct, forbid_unknown_fields=True):
    missing: list[str] | None = None
    extra: list[str] | None = None
    retyped: list[str] | None = None
    changed: list[str] | None = None


def _contract_value(c: _FastContract | None) -> dict[str, list[str] | None] | None:
    if c is None:
        return None
    return {"missing": c.missing, "extra": c.extra, "retyped": c.retyped, "changed": c.changed}


class _FastRecord(msgspec.Struct, forbid_unknown_fields=True):
    """A record whose every key is known and typed as its column: converted by msgspec and
    list comprehensions (the common case); anything else takes :func:`_record_row`."""

    v: _Int16 | None = None
    experiment: str | None = None
    request_id: str | None = None
    ts: float | None = None
    unit: str | None = None
    bucket: _Int32 | None = None
    served: str | None = None
    mirrored: bool | None = None
    segment: dict[str, str] | None = None
    champion: _FastSide | None = None
    challenger: _FastSide | None = None
    contract: _FastContract | None = None
    champion_repeat: _FastSide | None = None
    contract_repeat: _FastContract | None = None
    fields: msgspec.Raw = _NULL


_DECODE_RECORD = msgspec.json.Decoder(_FastRecord)
_DECODE_RECORDS = msgspec.json.Decoder(list[_FastRecord])
_SIDE_FIELDS = [f.name for f in SIDE_TYPE]
_SIDES = ("champion", "challenger", "champion_repeat")
_CONTRACTS = ("contract", "contract_repeat")


def _slow_record(payload: bytes) -> _FastRecord | tuple[Any, ...] | None:
    try:
        return _DECODE_RECORD.decode(payload)
    except msgspec.DecodeError:
        pass
    try:  # unknown keys (kept in extra) or a value of another type
        doc = orjson.loads(payload)
        if not isinstance(doc, dict):
            raise _Misfit
        return _record_row(doc)
    except (_Misfit, orjson.JSONDecodeError):
        return None


def _side_values(s: Any) -> tuple[Any, ...]:
    """A side as the tuple of its struct fields (fast struct, or the slow path's dict)."""
    if isinstance(s, dict):
        return tuple(s[k] for k in _SIDE_FIELDS)
    raw = bytes(s.prediction)
    return (s.version, s.status, s.latency_ms, None if raw == b"null" else raw.decode(),
            orjson.loads(raw) if raw[:1] == b'"' else None, s.error, s.truncated,
            s.response_bytes, None)  # fmt: skip


def _side_array(sides: list[Any]) -> pa.Array:
    present = [s for s in sides if s is not None]
    if len(present) == len(sides) and all(isinstance(s, _FastSide) for s in present):
        raws = [bytes(s.prediction) for s in sides]
        texts = [None if r == b"null" else r.decode() for r in raws]
        cols: list[list[Any]] = [
            [s.version for s in sides], [s.status for s in sides], [s.latency_ms for s in sides],
            texts, [orjson.loads(r) if r[:1] == b'"' else None for r in raws],
            [s.error for s in sides], [s.truncated for s in sides],
            [s.response_bytes for s in sides], [None] * len(sides),
        ]  # fmt: skip
        mask = None
    else:
        rows = [None if s is None else _side_values(s) for s in sides]
        cols = [[None if r is None else r[i] for r in rows] for i in range(len(_SIDE_FIELDS))]
        mask = pa.array([s is None for s in sides], pa.bool_())
    arrays = [pa.array(c, f.type) for c, f in zip(cols, SIDE_TYPE, strict=True)]
    return pa.StructArray.from_arrays(arrays, fields=list(SIDE_TYPE), mask=mask)


def _fast_value(name: str, x: Any) -> Any:
    if name in _CONTRACTS and isinstance(x, _FastContract):
        return _contract_value(x)
    if name == "fields" and isinstance(x, msgspec.Raw):
        b = bytes(x)
        return None if b == b"null" else b.decode()
    return x


def _pairs_columns(payloads: Sequence[bytes]) -> tuple[list[pa.Array], list[str | None]]:
    fast: list[_FastRecord] | None = None
    try:  # (one C call for the batch; a batch with any other record takes the slow path)
        decoded = _DECODE_RECORDS.decode(b"[" + b",".join(payloads) + b"]")
        if len(decoded) == len(payloads):  # (else a payload held several JSON values)
            fast = decoded
    except msgspec.DecodeError:
        pass
    names = [f.name for f in list(PAIRS_SCHEMA)[3:-1]]
    out: list[pa.Array] = []
    if fast is not None:
        raw: list[str | None] = [None] * len(fast)
        for name in names:
            typ = PAIRS_SCHEMA.field(name).type
            if name in _SIDES:
                out.append(_side_array([getattr(r, name) for r in fast]))
            elif name == "extra":
                out.append(pa.nulls(len(fast), typ))
            elif name in _CONTRACTS:
                out.append(pa.array([_contract_value(getattr(r, name)) for r in fast], typ))
            elif name == "fields":
                raws = [bytes(r.fields) for r in fast]
                out.append(pa.array([None if b == b"null" else b.decode() for b in raws], typ))
            else:
                out.append(pa.array([getattr(r, name) for r in fast], typ))
        return out, raw
    rows = [_slow_record(p) for p in payloads]
    raw = [None if r is not None else p.decode("utf-8", "replace")
           for r, p in zip(rows, payloads, strict=True)]  # fmt: skip
    for i, name in enumerate(names):
        typ = PAIRS_SCHEMA.field(name).type
        if name == "extra":
            vals = [r[i] if isinstance(r, tuple) else None for r in rows]
        else:
            vals = [None if r is None else r[i] if isinstance(r, tuple)
                    else _fast_value(name, getattr(r, name)) for r in rows]  # fmt: skip
        if name in _SIDES:
            out.append(_side_array(vals))
        elif name == "segment":
            out.append(pa.array([dict(m) if isinstance(m, list) else m for m in vals], typ))
        else:
            out.append(pa.array(vals, typ))
    return out, raw


def _outcome_columns(payloads: Sequence[bytes]) -> tuple[list[pa.Array], list[str | None]]:
    width = len(OUTCOMES_SCHEMA) - 4
    cols: list[list[Any]] = [[] for _ in range(width)]
    raw: list[str | None] = []
    empty = (None,) * width
    for payload in payloads:
        try:
            doc = orjson.loads(payload)
            if not isinstance(doc, dict):
                raise _Misfit
            row = _outcome_row(doc)
            raw.append(None)
        except (_Misfit, orjson.JSONDecodeError):
            row = empty
            raw.append(payload.decode("utf-8", "replace"))
        for c, value in zip(cols, row, strict=True):
            c.append(value)
    fields = list(OUTCOMES_SCHEMA)[3:-1]
    return [pa.array(c, f.type) for f, c in zip(fields, cols, strict=True)], raw


def entries_table(
    kind: str, stream: str, ids: Sequence[str], payloads: Sequence[bytes]
) -> pa.Table:
    """The archive rows of stream entries (``ids[i]``, payload of field ``r``) of one stream."""
    schema = schema_for(kind)
    typed, raw = (_pairs_columns if kind == "pairs" else _outcome_columns)(payloads)
    n = len(ids)
    stored = [int(i.partition("-")[0]) for i in ids]
    arrays = [
        pa.array(list(ids), pa.string()),
        pa.array([stream] * n, pa.string()),
        pa.array(stored, pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
        *typed,
        pa.array(raw, pa.string()),
    ]
    return pa.Table.from_arrays(arrays, schema=with_metadata(schema, kind))
