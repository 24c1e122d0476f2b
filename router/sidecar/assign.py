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


# ---- A/B/n: several challengers ---------------------------------------------------------------
#
# Each challenger owns a set of buckets, kept as a list of extents (half-open ranges
# ``[lo, hi)``) in the order they were allocated; the champion owns every bucket no challenger
# owns. A unit is served by the owner of its bucket. The layout is plain data (it lives in the
# live state every worker and replica follows), so assignment stays a pure function of
# ``(salt, unit, layout)``. The config file's challengers start as consecutive extents in list
# order (with one challenger: ``[0, threshold(split))``, today's formula). Later changes:
#
# - raising a challenger's share takes the extra buckets only from free (champion) buckets:
#   first by extending its last extent in place, then first-fit from the lowest free gap;
# - lowering it gives buckets back from the end of its most recently allocated extents;
# - removing it gives all its buckets back to the champion; adding one allocates first-fit.
#
# Proof sketch of the guarantees: (1) extents of different challengers never overlap, since an
# allocation only takes free buckets; (2) a change of challenger X only moves buckets between X
# and the free set, so no other challenger's bucket set, and so none of its units, changes;
# (3) growing X moves units champion -> X only, shrinking X moves X -> champion only; (4) the
# bucket itself is the salted hash, so a new salt re-randomises every unit.

Extent = tuple[int, int]
Layout = dict[str, tuple[Extent, ...]]


def extents_size(extents: tuple[Extent, ...]) -> int:
    return sum(hi - lo for lo, hi in extents)


def initial_layout(shares: list[tuple[str, float]]) -> Layout:
    """Consecutive extents in list order: the first challenger from bucket 0."""
    out: Layout = {}
    at = 0
    for name, fraction in shares:
        n = threshold(fraction)
        if at + n > BUCKETS:
            raise ValueError(f"split shares sum over 1 at {name!r}")
        out[name] = ((at, at + n),) if n else ()
        at += n
    return out


def free_extents(layout: Layout) -> list[Extent]:
    """The champion's buckets, as sorted extents."""
    taken = sorted(e for ext in layout.values() for e in ext)
    out: list[Extent] = []
    at = 0
    for lo, hi in taken:
        if lo > at:
            out.append((at, lo))
        at = max(at, hi)
    if at < BUCKETS:
        out.append((at, BUCKETS))
    return out


def _merge_tail(extents: list[Extent]) -> list[Extent]:
    if len(extents) >= 2 and extents[-2][1] == extents[-1][0]:
        lo = extents[-2][0]
        extents[-2:] = [(lo, extents[-1][1])]
    return extents


def resize(layout: Layout, name: str, fraction: float) -> Layout:
    """``layout`` with challenger ``name`` (new or existing) owning ``threshold(fraction)``
    buckets; only free buckets are taken and only its own are given back (see above)."""
    want = threshold(fraction)
    mine = list(layout.get(name, ()))
    have = extents_size(tuple(mine))
    if want > have:
        need = want - have
        free = free_extents(layout)
        if sum(hi - lo for lo, hi in free) < need:
            raise ValueError(f"split shares would sum over 1 with {name!r} at {fraction:g}")
        if mine:  # extend the last extent in place first
            end = mine[-1][1]
            for lo, hi in free:
                if lo == end:
                    take = min(need, hi - lo)
                    mine[-1] = (mine[-1][0], end + take)
                    free.remove((lo, hi))
                    if take < hi - lo:
                        free.append((lo + take, hi))
                        free.sort()
                    need -= take
                    break
        for lo, hi in free:
            if need <= 0:
                break
            take = min(need, hi - lo)
            mine.append((lo, lo + take))
            _merge_tail(mine)
            need -= take
    elif want < have:
        drop = have - want
        while drop > 0:
            lo, hi = mine[-1]
            if hi - lo <= drop:
                mine.pop()
                drop -= hi - lo
            else:
                mine[-1] = (lo, hi - drop)
                drop = 0
    out = dict(layout)
    out[name] = tuple(mine)
    return out


def remove(layout: Layout, name: str) -> Layout:
    return {k: v for k, v in layout.items() if k != name}


def owner_table(layout: Layout, order: list[str]) -> bytes:
    """Per bucket, 0 for the champion or ``1 + order.index(owner)`` (at most 255 challengers):
    the hot path's lookup is one index, whatever the number of challengers."""
    table = bytearray(BUCKETS)
    for i, name in enumerate(order):
        for lo, hi in layout.get(name, ()):
            table[lo:hi] = bytes([i + 1]) * (hi - lo)
    return bytes(table)
