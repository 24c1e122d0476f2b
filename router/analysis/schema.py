"""A typed view of the record format (DESIGN.md v1), the analyzer's rules for a valid record.

``msgspec`` validates records given as dicts (the in-memory API) and the lines of a page that
the columnar reader (:mod:`router.analysis.frames`) rejects, one at a time, so a bad line is
counted and skipped instead of failing its page. Unknown keys are ignored, so newer writers
that add keys stay readable.
"""

from __future__ import annotations

from typing import Any

import msgspec


class Side(msgspec.Struct, gc=False):
    version: str | None = None
    status: int | None = None
    latency_ms: float | None = None
    prediction: Any = None
    error: str | None = None


class Record(msgspec.Struct, gc=False):
    request_id: str
    ts: float
    served: str
    v: int = 1
    experiment: str | None = None
    unit: str | None = None
    bucket: int | None = None
    mirrored: bool = False
    segment: dict[str, str] | None = None
    champion: Side | None = None
    challenger: Side | None = None
    contract: dict[str, list[str]] | None = None
    fields: dict[str, Any] | None = None


record_decoder = msgspec.json.Decoder(Record)


def decode_record(raw: bytes | str) -> Record | None:
    """A record from JSON, or None when it is malformed or of the wrong shape."""
    try:
        return record_decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def record_from_dict(d: Any) -> Record | None:
    try:
        return msgspec.convert(d, Record)
    except (msgspec.ValidationError, TypeError):
        return None

