"""Tamper-evident audit trail: each record carries the SHA-256 of the previous one.

Record hashing: ``hash = sha256(canonical_json(record without "hash"))`` where canonical JSON is
UTF-8, keys sorted, no insignificant whitespace (``json.dumps(sort_keys=True,
separators=(",", ":"), ensure_ascii=False)``). ``prev`` of the first record is 64 zeros. ``seq``
counts from 0. Together with the head (count and last hash, stored apart from the list and
updated in the same transaction) this detects edited, inserted, deleted and truncated records.

The hashing rule itself is :mod:`router.capture.chain` (every writer of the chain uses it, the
routers' admin API included). Everything here is pure; :mod:`router.promotion.store` does the
Redis and JSONL I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from router.capture.chain import GENESIS, canonical_json, chain_record, record_hash

__all__ = [
    "GENESIS",
    "Head",
    "Problem",
    "canonical_json",
    "chain_record",
    "compare_copies",
    "describe",
    "record_hash",
    "verify_chain",
]


@dataclass(frozen=True, slots=True)
class Problem:
    position: int  # index in the stored list (or the count, for problems at the end)
    kind: str  # edited | inserted | deleted | truncated | unreadable | mismatch
    detail: str

    def __str__(self) -> str:
        return f"record #{self.position}: {self.kind}: {self.detail}"


@dataclass(frozen=True, slots=True)
class Head:
    count: int
    hash: str


def verify_chain(
    records: Sequence[dict[str, Any] | None], head: Head | None = None
) -> list[Problem]:
    """Recompute the chain; an empty list means intact. ``None`` entries are unparsable lines."""
    problems: list[Problem] = []
    expected_prev = GENESIS
    expected_seq = 0
    for pos, rec in enumerate(records):
        if rec is None or not isinstance(rec.get("seq"), int) or "hash" not in rec:
            problems.append(Problem(pos, "unreadable", "not a valid audit record"))
            continue
        seq: int = rec["seq"]
        if record_hash(rec) != rec["hash"]:
            problems.append(
                Problem(
                    pos,
                    "edited",
                    f"seq {seq} ({rec.get('event')}): content does not match its hash",
                )
            )
        if rec.get("prev") != expected_prev or seq != expected_seq:
            if seq > expected_seq:
                missing = f"seq {expected_seq}" + (f"..{seq - 1}" if seq - 1 > expected_seq else "")
                problems.append(Problem(pos, "deleted", f"{missing} missing before seq {seq}"))
            elif seq < expected_seq:
                problems.append(
                    Problem(
                        pos,
                        "inserted",
                        f"seq {seq} appears after seq {expected_seq - 1}; "
                        "a record was inserted before it",
                    )
                )
            else:
                problems.append(
                    Problem(
                        pos,
                        "edited",
                        f"seq {seq}: prev hash does not match the record "
                        "before it (record replaced or inserted)",
                    )
                )
        expected_prev = str(rec["hash"])
        expected_seq = seq + 1
    if head is not None:
        n = len(records)
        if head.count > n:
            problems.append(
                Problem(
                    n,
                    "truncated",
                    f"head says {head.count} records, found {n}: "
                    f"{head.count - n} deleted at the end",
                )
            )
        elif head.count < n:
            problems.append(
                Problem(head.count, "inserted", f"head says {head.count} records, found {n}")
            )
        elif n and head.hash != expected_prev:
            problems.append(Problem(n - 1, "edited", "last record does not match the head hash"))
    return problems


def compare_copies(
    primary: Sequence[dict[str, Any] | None], mirror: Sequence[dict[str, Any] | None]
) -> list[Problem]:
    """Differences between the Redis copy and the JSONL mirror (by hash, position by position)."""
    problems: list[Problem] = []
    for pos in range(max(len(primary), len(mirror))):
        a = primary[pos] if pos < len(primary) else None
        b = mirror[pos] if pos < len(mirror) else None
        ha = a.get("hash") if a else None
        hb = b.get("hash") if b else None
        if ha != hb:
            where = "missing in mirror" if b is None else "missing in redis" if a is None else ""
            problems.append(Problem(pos, "mismatch", where or "redis and mirror copies differ"))
    return problems


def describe(rec: dict[str, Any]) -> str:
    """One readable line for ``router audit show``."""
    import datetime as _dt

    ts = _dt.datetime.fromtimestamp(float(rec.get("ts", 0.0)), tz=_dt.UTC)
    line = (
        f"{rec.get('seq', '?'):>4}  {ts:%Y-%m-%d %H:%M:%S}Z  {rec.get('event', '?'):<18} "
        f"{rec.get('stage_from') or '-'} -> {rec.get('stage_to') or '-'}"
    )
    if rec.get("split") is not None:
        line += f"  split={rec['split']:g}"
    versions = rec.get("versions") or {}
    if versions:
        line += f"  champion={versions.get('champion')} challenger={versions.get('challenger')}"
    line += f"  by {rec.get('actor', '?')}"
    data = rec.get("data") or {}
    for reason in data.get("reasons", []) or []:
        line += f"\n        reason: {reason}"
    for g in data.get("gates", []) or []:
        mark = "pass" if g.get("passed") else "FAIL"
        line += (
            f"\n        gate {g.get('name')}: {mark} value={g.get('value')} "
            f"threshold={g.get('threshold')}"
        )
    if data.get("possible_rubber_stamp"):
        line += f"\n        FLAG: possible rubber stamp ({data.get('seconds_after_request')} s)"
    if data.get("rollback_target"):
        rt = data["rollback_target"]
        line += f"\n        rollback target: {rt.get('version')} at {rt.get('url')}"
    return line
