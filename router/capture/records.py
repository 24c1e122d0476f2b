"""Records of proxied exchanges (pure; no I/O).

The hot path only fills a :class:`PendingRecord` with raw facts (bytes, floats). Everything
costly, JSON parsing of responses, prediction extraction, the response-contract diff, body
field capture and redaction, happens in :func:`finalize`, called by the capture writer off the
hot path. The output follows the DESIGN.md record schema, version 1.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import orjson

RECORD_VERSION = 1
_MISSING = object()

# Plausibility of a timestamp (unix seconds) in a record or an outcome: before TS_MIN is a clock
# or unit error; at or above TS_MS it is in milliseconds (1e11 s is the year 5138); more than
# FUTURE_SLACK_S after the reader's clock it is in the future.
TS_MIN = 946_684_800.0  # 2000-01-01T00:00:00Z
TS_MS = 1e11
FUTURE_SLACK_S = 86_400.0


def ts_problem(ts: float, now: float | None = None) -> str | None:
    """Why ``ts`` is not a plausible unix time in seconds (``"ts: <kind>"``), or None. The
    future is judged against ``now`` only when it is given."""
    if ts >= TS_MS:
        return "ts: in milliseconds (or finer), not seconds"
    if ts < TS_MIN:
        return "ts: before 2000-01-01"
    if now is not None and ts > now + FUTURE_SLACK_S:
        return "ts: in the future (over a day after the reader's clock)"
    return None


def get_path(obj: Any, path: str) -> Any:
    """Value at a dotted path (``user.id``, ``predictions.0``); ``_MISSING`` when absent."""
    cur = obj
    for part in path.split("."):
        if isinstance(cur, dict):
            if part not in cur:
                return _MISSING
            cur = cur[part]
        elif isinstance(cur, list):
            try:
                cur = cur[int(part)]
            except (ValueError, IndexError):
                return _MISSING
        else:
            return _MISSING
    return cur


def lookup(obj: Any, path: str) -> Any | None:
    """Like :func:`get_path` but ``None`` when absent."""
    v = get_path(obj, path)
    return None if v is _MISSING else v


def unit_from_body(body: bytes, path: str) -> str | None:
    """The unit at ``path`` of a JSON body, as a string; None when absent or not JSON."""
    if not body:
        return None
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    v = get_path(doc, path)
    if v is _MISSING or v is None or isinstance(v, (dict, list)):
        return None
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _type_name(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"


def shape(doc: Any, prefix: str = "", out: dict[str, str] | None = None) -> dict[str, str]:
    """Flatten a JSON document to ``{path: type}``; arrays collapse to ``path[]``."""
    out = {} if out is None else out
    t = _type_name(doc)
    if prefix:
        out[prefix] = t
    if t == "object":
        for k, v in doc.items():
            shape(v, f"{prefix}.{k}" if prefix else str(k), out)
    elif t == "array":
        for v in doc:
            shape(v, f"{prefix}[]", out)
    return out


def contract_diff(champion: Any, challenger: Any) -> dict[str, list[str]] | None:
    """Shape difference of the challenger's response against the champion's, or None if equal.

    ``missing``: paths the champion has and the challenger lacks; ``extra``: the reverse;
    ``retyped``: same path, different JSON type (null counts as a type).
    """
    a, b = shape(champion), shape(challenger)
    missing = sorted(p for p in a if p not in b)
    extra = sorted(p for p in b if p not in a)
    retyped = sorted(p for p in a if p in b and a[p] != b[p])
    if not (missing or extra or retyped):
        return None
    return {"missing": missing, "extra": extra, "retyped": retyped}


@dataclass(slots=True)
class Side:
    """What one model answered (raw)."""

    version: str
    status: int | None = None
    latency_ms: float | None = None
    body: bytes | None = None
    error: str | None = None
    truncated: bool = False  # only the first bytes of the answer were kept (shadow side)
    response_bytes: int | None = None  # the full body size when truncated


@dataclass(slots=True)
class PendingRecord:
    """Raw facts of one exchange, gathered on the hot path; finalized off it."""

    experiment: str
    request_id: str
    ts: float
    unit: str
    bucket: int
    served: str  # "champion" | "challenger"
    mirrored: bool
    segment: dict[str, str] = field(default_factory=dict)
    champion: Side | None = None
    challenger: Side | None = None
    request_body: bytes | None = None  # only kept when capture fields are configured
    variant: str = ""  # the name of the variant that served ("champion" or a challenger's)
    arm: str | None = None  # the name of the challenger whose answer is in ``challenger``
    shadows: dict[str, Side] | None = None  # further challengers mirrored (A/B/n fan-out)
    forced: bool = False  # the variant was forced (X-Router-Force): kept out of statistics
    mirror_skipped: dict[str, str] | None = None  # shadow target -> why it was not mirrored
    pending_shadows: int = 0  # shadow calls still running (capture waits for the last)


@dataclass(frozen=True, slots=True)
class FinalizeOptions:
    prediction_path: str | None = "score"
    fields: tuple[str, ...] = ()
    hash_fields: tuple[str, ...] = ()
    hash_salt: str = ""


def _parse(body: bytes | None) -> Any:
    if not body:
        return _MISSING
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return _MISSING


def _side_dict(side: Side | None, doc: Any, opts: FinalizeOptions) -> dict[str, Any] | None:
    if side is None:
        return None
    prediction = None
    if opts.prediction_path and doc is not _MISSING:
        prediction = lookup(doc, opts.prediction_path)
    out = {
        "version": side.version,
        "status": side.status,
        "latency_ms": side.latency_ms,
        "prediction": prediction,
        "error": side.error,
    }
    if side.truncated:  # additions to schema v1, present only on a truncated shadow answer
        out["truncated"] = True
        out["response_bytes"] = side.response_bytes
    return out


def hash_value(value: Any, salt: str) -> str:
    raw = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    return "sha256:" + hashlib.sha256(salt.encode() + b":" + raw).hexdigest()


def captured_fields(body: bytes | None, opts: FinalizeOptions) -> dict[str, Any] | None:
    """Request body fields to keep: listed paths verbatim, hash paths as salted SHA-256."""
    if not (opts.fields or opts.hash_fields) or not body:
        return None
    doc = _parse(body)
    if doc is _MISSING:
        return None
    out: dict[str, Any] = {}
    for p in opts.fields:
        v = get_path(doc, p)
        if v is not _MISSING:
            out[p] = v
    for p in opts.hash_fields:
        v = get_path(doc, p)
        if v is not _MISSING:
            out[p] = hash_value(v, opts.hash_salt)
    return out


def finalize(rec: PendingRecord, opts: FinalizeOptions) -> dict[str, Any]:
    """The DESIGN.md record (v1) for a pending exchange."""
    champ_doc = _parse(rec.champion.body) if rec.champion is not None else _MISSING
    chall_doc = _parse(rec.challenger.body) if rec.challenger is not None else _MISSING
    contract = None
    if rec.mirrored and champ_doc is not _MISSING and chall_doc is not _MISSING:
        contract = contract_diff(champ_doc, chall_doc)
    out: dict[str, Any] = {
        "v": RECORD_VERSION,
        "experiment": rec.experiment,
        "request_id": rec.request_id,
        "ts": rec.ts,
        "unit": rec.unit,
        "bucket": rec.bucket,
        "served": rec.served,
        "mirrored": rec.mirrored,
        "segment": rec.segment,
        "champion": _side_dict(rec.champion, champ_doc, opts),
        "challenger": _side_dict(rec.challenger, chall_doc, opts),
        "contract": contract,
    }
    # additions to schema v1 (A/B/n, issue 16), present only when they say something, so a
    # single-challenger record is unchanged: ``variant`` the served variant's name when it is
    # not ``served`` itself (a named challenger), ``arm`` the name of the challenger in
    # ``challenger`` when it is not "challenger"
    if rec.variant and rec.variant != rec.served:
        out["variant"] = rec.variant
    if rec.arm is not None and rec.arm != "challenger":
        out["arm"] = rec.arm
    if rec.shadows:
        out["shadows"] = {
            name: _side_dict(side, _parse(side.body), opts) for name, side in rec.shadows.items()
        }
    if rec.forced:
        out["forced"] = True
    if rec.mirror_skipped:
        out["mirror_skipped"] = rec.mirror_skipped
    fields = captured_fields(rec.request_body, opts)
    if fields is not None:
        out["fields"] = fields
    return out
