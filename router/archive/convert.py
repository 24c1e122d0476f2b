"""Stream entries converted into the archive's rows (:mod:`router.archive.schema`; pure, no I/O).

Two paths give the same rows. The **fast path** decodes a whole batch of pairs (a page of a
stream, as the archiver reads it) with msgspec into :class:`_FastRecord` (every key known, every
value of its column's type: the common case, today's records included) and builds each column
from one C-level ``map`` over the records (the JSON-text columns from one joined buffer, without
a Python object per value). A batch with any other record takes the **slow path**, entry by
entry: known keys typed by hand, unknown keys kept as JSON text in ``extra``/``<side>.extra``, an
entry that does not fit kept whole in ``raw``. When the record gains a field, it gains a column
in the schema *and* a field here in the fast structs, or every batch of the new records takes
the slow path (tests/archive check that today's records decode fast).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from operator import attrgetter
from typing import Annotated, Any

import msgspec
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from router.archive.schema import (
    CONTRACT_KEYS,
    OUTCOME_KEYS,
    OUTCOMES_SCHEMA,
    PAIRS_SCHEMA,
    RECORD_KEYS,
    SIDE_KEYS,
    SIDE_TYPE,
    schema_for,
    with_metadata,
)

_NULL = msgspec.Raw(b"null")
_INT32 = 2**31
_INT64 = 2**63


class _Misfit(Exception):
    """A known field with a JSON type its column cannot hold."""


def _str(x: Any) -> str | None:
    if x is None or isinstance(x, str):
        return x
    raise _Misfit


def _int(x: Any, bound: int = _INT32) -> int | None:
    if x is None:
        return None
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise _Misfit
    if isinstance(x, float):
        if not x.is_integer():
            raise _Misfit
        x = int(x)
    if not -bound <= x < bound:
        raise _Misfit
    return x


def _float(x: Any) -> float | None:
    if x is None:
        return None
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise _Misfit
    return float(x)


def _finite(x: Any) -> float | None:
    f = _float(x)
    if f is not None and not math.isfinite(f):
        raise _Misfit
    return f


def _bool(x: Any) -> bool | None:
    if x is None or isinstance(x, bool):
        return x
    raise _Misfit


def _json(x: Any) -> str | None:
    return None if x is None else orjson.dumps(x).decode()


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
    return {
        "version": _str(d.get("version")),
        "status": _int(d.get("status")),
        "latency_ms": _finite(d.get("latency_ms")),
        "prediction": _json(pred),
        "prediction_text": pred if isinstance(pred, str) else None,
        "error": _str(d.get("error")),
        "truncated": _bool(d.get("truncated")),
        "response_bytes": _int(d.get("response_bytes"), _INT64),
        "extra": _extra(d, SIDE_KEYS),
        "ttfb_ms": _finite(d.get("ttfb_ms")),
        "duration_ms": _finite(d.get("duration_ms")),
        "bytes": _int(d.get("bytes"), _INT64),
        "streamed": _bool(d.get("streamed")),
        "events": _int(d.get("events"), _INT64),
        "usage": _json(d.get("usage")),
        "finish_reason": _str(d.get("finish_reason")),
        "parse_error": _str(d.get("parse_error")),
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
    if not isinstance(d, dict) or set(d) - set(CONTRACT_KEYS):
        raise _Misfit
    out: dict[str, list[str] | None] = {}
    for k in CONTRACT_KEYS:
        items = d.get(k)
        if items is not None and not (
            isinstance(items, list) and all(isinstance(p, str) for p in items)
        ):
            raise _Misfit
        out[k] = items
    return out


def _record_row(d: dict[str, Any]) -> dict[str, Any]:
    """A record's column values by name (the slow path)."""
    return {
        "v": _int(d.get("v"), 2**15),
        "experiment": _str(d.get("experiment")),
        "request_id": _str(d.get("request_id")),
        "ts": _finite(d.get("ts")),
        "unit": _str(d.get("unit")),
        "bucket": _int(d.get("bucket")),
        "served": _str(d.get("served")),
        "mirrored": _bool(d.get("mirrored")),
        "segment": _segment(d.get("segment")),
        "champion": _side(d.get("champion")),
        "challenger": _side(d.get("challenger")),
        "contract": _contract(d.get("contract")),
        "champion_repeat": _side(d.get("champion_repeat")),
        "contract_repeat": _contract(d.get("contract_repeat")),
        "client_aborted": _bool(d.get("client_aborted")),
        "fields": _json(d.get("fields")),
        "extra": _extra(d, RECORD_KEYS),
    }


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
        _extra(d, OUTCOME_KEYS),
    )


# ---------------------------------------------------------------------- the fast path
_Int32 = Annotated[int, msgspec.Meta(ge=-_INT32, lt=_INT32)]
_Int64 = Annotated[int, msgspec.Meta(ge=-_INT64, le=_INT64 - 1)]
_Int16 = Annotated[int, msgspec.Meta(ge=-(2**15), lt=2**15)]


# (gc=False: the structs hold no cycles; untracked, a batch of them costs the collector nothing)
class _FastSide(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    version: str | None = None
    status: _Int32 | None = None
    latency_ms: float | None = None
    prediction: msgspec.Raw = _NULL
    error: str | None = None
    truncated: bool | None = None
    response_bytes: _Int64 | None = None
    ttfb_ms: float | None = None
    duration_ms: float | None = None
    body_bytes: _Int64 | None = msgspec.field(default=None, name="bytes")
    streamed: bool | None = None
    events: _Int64 | None = None
    usage: msgspec.Raw = _NULL
    finish_reason: str | None = None
    parse_error: str | None = None


class _FastContract(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    missing: list[str] | None = None
    extra: list[str] | None = None
    retyped: list[str] | None = None
    changed: list[str] | None = None


def _contract_value(c: _FastContract | None) -> dict[str, list[str] | None] | None:
    if c is None:
        return None
    return {"missing": c.missing, "extra": c.extra, "retyped": c.retyped, "changed": c.changed}


class _FastRecord(msgspec.Struct, forbid_unknown_fields=True, gc=False):
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
    client_aborted: bool | None = None
    fields: msgspec.Raw = _NULL


_DECODE_RECORD = msgspec.json.Decoder(_FastRecord)
_SIDE_FIELDS = [f.name for f in SIDE_TYPE]
_SIDES = ("champion", "challenger", "champion_repeat")
_CONTRACTS = ("contract", "contract_repeat")
_PAIR_COLUMNS = [f.name for f in list(PAIRS_SCHEMA)[3:-1]]  # (not bookkeeping, not raw)


def _slow_record(payload: bytes) -> _FastRecord | dict[str, Any] | None:
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


def _raw_text(r: msgspec.Raw) -> str | None:
    b = bytes(r)
    return None if b == b"null" else b.decode()


def _fast_side(s: _FastSide) -> dict[str, Any]:
    raw = bytes(s.prediction)
    return {
        "version": s.version, "status": s.status, "latency_ms": s.latency_ms,
        "prediction": None if raw == b"null" else raw.decode(),
        "prediction_text": orjson.loads(raw) if raw[:1] == b'"' else None,
        "error": s.error, "truncated": s.truncated, "response_bytes": s.response_bytes,
        "extra": None, "ttfb_ms": s.ttfb_ms, "duration_ms": s.duration_ms,
        "bytes": s.body_bytes, "streamed": s.streamed, "events": s.events,
        "usage": _raw_text(s.usage), "finish_reason": s.finish_reason,
        "parse_error": s.parse_error,
    }  # fmt: skip


_SIDE_ATTRS = [
    (f.name, "body_bytes" if f.name == "bytes" else f.name)
    for f in SIDE_TYPE
    if f.name not in ("prediction_text", "extra")
]
_NO_SIDE = _FastSide()  # (the children of an absent side: every field null)


def _raw_column(raws: Sequence[msgspec.Raw]) -> pa.Array:
    """JSON text (``msgspec.Raw``) as a string column, the JSON null as null: the texts
    joined into one buffer, their lengths the offsets (no Python object per value)."""
    data = b"".join(raws)
    if len(data) >= 2**31:  # (beyond 32-bit offsets: one bytes object per value)
        arr = pa.array(list(map(bytes, raws)), pa.binary()).cast(pa.string())
    else:
        offsets = np.zeros(len(raws) + 1, np.int32)
        np.cumsum(np.fromiter(map(len, raws), np.int32, len(raws)), out=offsets[1:])
        arr = pa.Array.from_buffers(
            pa.binary(), len(raws), [None, pa.py_buffer(offsets), pa.py_buffer(data)]
        ).cast(pa.string())  # (validates UTF-8)
    return pc.if_else(pc.equal(arr, "null"), pa.scalar(None, pa.string()), arr)


def _text_column(pred: pa.Array) -> pa.Array:
    """``prediction_text``: the prediction when it is a JSON string, unquoted (Python only
    for those rows)."""
    quoted = pc.fill_null(pc.starts_with(pred, '"'), False)
    if not pc.any(quoted).as_py():
        return pa.nulls(len(pred), pa.string())
    texts = [orjson.loads(t) if q else None
             for t, q in zip(pred.to_pylist(), quoted.to_pylist(), strict=True)]  # fmt: skip
    return pa.array(texts, pa.string())


def _fast_side_array(sides: list[Any]) -> pa.StructArray:
    """Fast structs (or None) as the struct column: a list per field (C-level ``map``), the
    JSON-text fields vectorised."""
    n = len(sides)
    absent = sides.count(None)
    filled = [s if s is not None else _NO_SIDE for s in sides] if absent else sides
    mask = pa.array([s is None for s in sides], pa.bool_()) if absent else None
    if absent == n:
        return pa.nulls(n, SIDE_TYPE)
    cols: dict[str, Any] = {
        name: list(map(attrgetter(attr), filled)) for name, attr in _SIDE_ATTRS
    }  # (a list per field: no per-row tuples, which would wake the garbage collector)
    pred = cols["prediction"] = _raw_column(cols["prediction"])
    cols["prediction_text"] = _text_column(pred)
    cols["usage"] = _raw_column(cols["usage"])
    cols["extra"] = None
    arrays = [
        c if isinstance(c, pa.Array) else pa.nulls(n, f.type) if c is None else pa.array(c, f.type)
        for f in SIDE_TYPE
        for c in (cols[f.name],)
    ]
    return pa.StructArray.from_arrays(arrays, fields=list(SIDE_TYPE), mask=mask)


def _side_array(sides: list[Any]) -> pa.Array:
    """Sides (fast structs, the slow path's dicts, None) as the struct column."""
    if all(s is None or isinstance(s, _FastSide) for s in sides):
        return _fast_side_array(sides)
    rows = [None if s is None else s if isinstance(s, dict) else _fast_side(s) for s in sides]
    cols = {k: [None if r is None else r[k] for r in rows] for k in _SIDE_FIELDS}
    mask = pa.array([s is None for s in sides], pa.bool_())
    arrays = [pa.array(cols[f.name], f.type) for f in SIDE_TYPE]
    return pa.StructArray.from_arrays(arrays, fields=list(SIDE_TYPE), mask=mask)


def _fast_value(name: str, x: Any) -> Any:
    if name in _CONTRACTS and isinstance(x, _FastContract):
        return _contract_value(x)
    if name == "fields" and isinstance(x, msgspec.Raw):
        return _raw_text(x)
    return x


def decodes_fast(payloads: Sequence[bytes]) -> list[_FastRecord] | None:
    """The batch as fast records (msgspec, in C), None when any record needs the slow path."""
    try:
        return list(map(_DECODE_RECORD.decode, payloads))
    except msgspec.DecodeError:
        return None


def _pairs_columns(payloads: Sequence[bytes]) -> tuple[list[pa.Array], list[str | None]]:
    fast = decodes_fast(payloads)
    out: list[pa.Array] = []
    if fast is not None:
        n = len(fast)
        for name in _PAIR_COLUMNS:
            typ = PAIRS_SCHEMA.field(name).type
            vals = list(map(attrgetter(name), fast)) if name != "extra" else []
            if name in _SIDES:
                out.append(_fast_side_array(vals))
            elif name == "extra":
                out.append(pa.nulls(n, typ))
            elif name in _CONTRACTS:
                out.append(pa.array([None if c is None else _contract_value(c) for c in vals],
                                    typ))  # fmt: skip
            elif name == "fields":
                out.append(_raw_column(vals))
            else:
                out.append(pa.array(vals, typ))
        return out, [None] * n
    rows = [_slow_record(p) for p in payloads]
    raw = [None if r is not None else p.decode("utf-8", "replace")
           for r, p in zip(rows, payloads, strict=True)]  # fmt: skip
    for name in _PAIR_COLUMNS:
        typ = PAIRS_SCHEMA.field(name).type
        if name == "extra":
            vals = [r[name] if isinstance(r, dict) else None for r in rows]
        else:
            vals = [None if r is None else r[name] if isinstance(r, dict)
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
    id_col = pa.array(ids, pa.string())
    arrays = [
        id_col,
        pa.array([stream] * n, pa.string()),
        stored_ms(id_col).cast(pa.timestamp("ms", tz="UTC")),
        *typed,
        pa.array(raw, pa.string()),
    ]
    return pa.Table.from_arrays(arrays, schema=with_metadata(schema, kind))


def stored_ms(ids: pa.Array) -> pa.Array:
    """The milliseconds part of stream ids (``<ms>-<seq>``) as int64 (vectorised)."""
    return pc.cast(pc.list_element(pc.split_pattern(ids, "-", max_splits=1), 0), pa.int64())


def id_seq(ids: pa.Array) -> pa.Array:
    """The sequence part of stream ids (0 when an id has none) as int64 (vectorised)."""
    seq = pc.replace_substring_regex(ids, r"^[^-]*-?", "")
    return pc.cast(pc.if_else(pc.equal(seq, ""), "0", seq), pa.int64())
