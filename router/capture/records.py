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

from router.capture.textpred import openai_text

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


@dataclass(frozen=True, slots=True)
class ContractRules:
    """How responses are compared (``experiment.contract``): paths ignored (with everything
    under them), whether leaf values are compared, and absolute numeric tolerances per path."""

    ignore: tuple[str, ...] = ()
    compare_values: bool = False
    tolerance: tuple[tuple[str, float], ...] = ()
    default_tolerance: float = 0.0

    def ignored(self, path: str) -> bool:
        for p in self.ignore:
            if path == p or path.startswith(p + ".") or path.startswith(p + "["):
                return True
        return False


NO_RULES = ContractRules()


def leaves(doc: Any, prefix: str = "", out: dict[str, list[Any]] | None = None) -> dict[str, list]:
    """Leaf values (not objects or arrays) by path in :func:`shape`'s notation, in document
    order (an array's elements share the path ``path[]``)."""
    out = {} if out is None else out
    if isinstance(doc, dict):
        for k, v in doc.items():
            leaves(v, f"{prefix}.{k}" if prefix else str(k), out)
    elif isinstance(doc, list):
        for v in doc:
            leaves(v, f"{prefix}[]", out)
    else:
        out.setdefault(prefix, []).append(doc)
    return out


def _same(a: Any, b: Any, tol: float) -> bool:
    num = (int, float)
    if isinstance(a, num) and isinstance(b, num) and not isinstance(a, bool) \
            and not isinstance(b, bool):  # fmt: skip
        return a == b or abs(a - b) <= tol
    return bool(a == b)


def contract_diff(
    champion: Any, challenger: Any, rules: ContractRules = NO_RULES
) -> dict[str, list[str]] | None:
    """Shape difference of the challenger's response against the champion's, or None if equal.

    ``missing``: paths the champion has and the challenger lacks; ``extra``: the reverse;
    ``retyped``: same path, different JSON type (null counts as a type). With
    ``rules.compare_values``, also ``changed``: leaf paths present in both whose values differ
    (numbers by more than the path's tolerance; an array path when an element differs or the
    arrays differ in length). Paths under ``rules.ignore`` are left out.
    """
    a, b = shape(champion), shape(challenger)
    if rules.ignore:
        a = {p: t for p, t in a.items() if not rules.ignored(p)}
        b = {p: t for p, t in b.items() if not rules.ignored(p)}
    missing = sorted(p for p in a if p not in b)
    extra = sorted(p for p in b if p not in a)
    retyped = sorted(p for p in a if p in b and a[p] != b[p])
    changed: list[str] = []
    if rules.compare_values:
        la, lb = leaves(champion), leaves(challenger)
        tols = dict(rules.tolerance)
        for p, va in la.items():
            vb = lb.get(p)
            if vb is None or a.get(p) is None or a.get(p) != b.get(p):
                continue  # absent, ignored or retyped: reported above
            tol = tols.get(p, rules.default_tolerance)
            same = len(va) == len(vb) and all(_same(x, y, tol) for x, y in zip(va, vb, strict=True))
            if not same:
                changed.append(p)
        changed.sort()
    if not (missing or extra or retyped or changed):
        return None
    out = {"missing": missing, "extra": extra, "retyped": retyped}
    if rules.compare_values:
        out["changed"] = changed
    return out


@dataclass(slots=True)
class Side:
    """What one model answered (raw)."""

    version: str
    status: int | None = None
    latency_ms: float | None = None
    body: bytes | None = None
    error: str | None = None
    truncated: bool = False  # only the first bytes of the answer were kept
    response_bytes: int | None = None  # the full body size when truncated
    ttfb_ms: float | None = None  # from the call to the first body byte
    duration_ms: float | None = None  # from the call to the end of the body
    body_bytes: int | None = None  # body size as received (record key "bytes")
    events: int | None = None  # server-sent events (event streams only)
    streamed: bool = False  # passed on as it arrived (not buffered whole)


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
    client_aborted: bool = False  # the client went away before a streamed answer ended
    champion_repeat: Side | None = None  # the noise floor: the champion asked a second time
    waiting: int = 0  # shadow jobs still running on this record (captured when the last ends)
    variant: str = ""  # the name of the variant that served ("champion" or a challenger's)
    arm: str | None = None  # the name of the challenger whose answer is in ``challenger``
    shadows: dict[str, Side] | None = None  # further challengers mirrored (A/B/n fan-out)
    forced: bool = False  # the variant was forced (X-Router-Force): kept out of statistics
    mirror_skipped: dict[str, str] | None = None  # shadow target -> why it was not mirrored


@dataclass(frozen=True, slots=True)
class FinalizeOptions:
    prediction_path: str | None = "score"
    prediction_format: str = "json"  # json | openai (see router.capture.textpred)
    fields: tuple[str, ...] = ()
    hash_fields: tuple[str, ...] = ()
    hash_salt: str = ""
    contract: ContractRules = NO_RULES


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
    extra: dict[str, Any] = {}
    if opts.prediction_format == "openai":
        if side.body:
            ans = openai_text(side.body, side.truncated)
            prediction = ans.text
            if ans.usage is not None:
                extra["usage"] = ans.usage
            if ans.finish_reason is not None:
                extra["finish_reason"] = ans.finish_reason
            if ans.error is not None:
                extra["parse_error"] = ans.error
    elif opts.prediction_path and doc is not _MISSING:
        prediction = lookup(doc, opts.prediction_path)
    out = {
        "version": side.version,
        "status": side.status,
        "latency_ms": side.latency_ms,
        "prediction": prediction,
        "error": side.error,
    }
    # additions to schema v1, each present only when known
    if side.truncated:  # only the first bytes of the answer were kept
        out["truncated"] = True
        out["response_bytes"] = side.response_bytes
    if side.ttfb_ms is not None:
        out["ttfb_ms"] = side.ttfb_ms
    if side.duration_ms is not None:
        out["duration_ms"] = side.duration_ms
    if side.body_bytes is not None:
        out["bytes"] = side.body_bytes
    if side.events is not None:
        out["events"] = side.events
    if side.streamed:
        out["streamed"] = True
    if extra:
        out |= extra
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
        contract = contract_diff(champ_doc, chall_doc, opts.contract)
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
    if rec.client_aborted:  # addition to schema v1: a streamed answer the client left
        out["client_aborted"] = True
    if rec.champion_repeat is not None:  # additions to schema v1: a noise-floor pair
        rep_doc = _parse(rec.champion_repeat.body)
        out["champion_repeat"] = _side_dict(rec.champion_repeat, rep_doc, opts)
        out["contract_repeat"] = (
            contract_diff(champ_doc, rep_doc, opts.contract)
            if champ_doc is not _MISSING and rep_doc is not _MISSING
            else None
        )
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
