"""Deterministic unit assignment (pure; no I/O).

The contract (DESIGN.md, principle 2)::

    digest = sha256(f"{salt}:{unit}".encode("utf-8")).digest()
    bucket(salt, unit) = int.from_bytes(digest[:8], "big") % 10000
    challenger  iff  bucket < threshold(fraction),   threshold(f) = round(f * 10000)

SHA-256 is fixed and not salted per process (unlike Python's ``hash()``), so the same unit lands
in the same bucket on every worker, replica, restart and machine, and in any language that has
SHA-256. Because the variant is a threshold on a fixed bucket, raising the fraction only moves
units champion -> challenger (monotonic ramps). Different salts give independent assignments.

The mirror decision uses the same function with its own salt (``<salt>:mirror`` by default), so
whether a unit is mirrored is sticky and independent of which variant serves it.
"""

from __future__ import annotations

from hashlib import sha256

BUCKETS = 10_000


def bucket(salt: str, unit: str) -> int:
    """Bucket in ``[0, 10000)`` of ``unit`` under ``salt`` (SHA-256, first 8 bytes, big-endian)."""
    digest = sha256(f"{salt}:{unit}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def threshold(fraction: float) -> int:
    """Number of buckets (of 10000) that take the treatment at ``fraction`` in [0, 1]."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be within [0, 1], got {fraction}")
    return round(fraction * BUCKETS)


def in_treatment(bucket_: int, fraction: float) -> bool:
    """True when a unit in ``bucket_`` is treated (challenger / mirrored) at ``fraction``."""
    return bucket_ < threshold(fraction)


def assign(salt: str, unit: str, fraction: float) -> tuple[int, bool]:
    """``(bucket, challenger?)`` for ``unit``; a convenience over :func:`bucket`."""
    b = bucket(salt, unit)
    return b, in_treatment(b, fraction)
