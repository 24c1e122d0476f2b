"""Hash-chained audit records (pure): the canonical JSON, a record's hash and the chaining rule.

``hash = sha256(canonical_json(record without "hash"))``; canonical JSON is UTF-8, keys sorted,
no insignificant whitespace. ``prev`` of the first record is 64 zeros, ``seq`` counts from 0.
Here (below the sidecar and promotion) because every writer of the experiment's audit chain
uses it: the promotion controller and CLI, and a router's admin API
(:mod:`router.capture.controlplane`). Verification is :mod:`router.promotion.audit`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

GENESIS = "0" * 64


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def record_hash(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(canonical_json(body)).hexdigest()


def chain_record(body: dict[str, Any], *, seq: int, prev: str) -> dict[str, Any]:
    """Return ``body`` extended with ``seq``, ``prev`` and its own ``hash``."""
    if "hash" in body or "prev" in body or "seq" in body:
        raise ValueError("audit body must not set seq, prev or hash")
    rec = dict(body, seq=seq, prev=prev)
    rec["hash"] = record_hash(rec)
    return rec
