"""Read a window of a capture stream (pairs or outcomes) from Redis, page by page.

Entries are written by the capture writer as ``XADD <key> * r <json>``; stream IDs are
milliseconds since the epoch, so a time window is an ID range. :func:`iter_entries` pages with
``XRANGE`` (exclusive start after each page), yielding lists of raw JSON payloads, so a reader
holds one page in memory whatever the window's size. :func:`earliest_ts` tells an analyzer
where the stream begins now (after ``MAXLEN``/``MINID`` trimming), so a half-trimmed window is
reported, never silently analysed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

PAGE = 10_000


def _id_bound(ts: float | None, default: str) -> str:
    return default if ts is None else str(int(ts * 1000))


def _id_ms(entry_id: Any) -> int:
    s = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    return int(s.split("-", 1)[0])


def iter_entries(
    client: Any,
    key: str,
    since: float | None = None,
    until: float | None = None,
    count: int = PAGE,
    *,
    until_exclusive: bool = False,
) -> Iterator[list[bytes]]:
    """Pages of raw ``r`` payloads of ``key`` with IDs in ``[since, until]`` (unix seconds;
    ``[since, until)`` with ``until_exclusive``)."""
    start = _id_bound(since, "-")
    end = _id_bound(until, "+")
    if until_exclusive and until is not None:
        end = "(" + end
    while True:
        page = client.xrange(key, min=start, max=end, count=count)
        if not page:
            return
        out = []
        for _id, fields in page:
            raw = fields.get(b"r")
            if raw is None:
                raw = fields.get("r")
            if raw is not None:
                out.append(raw if isinstance(raw, bytes) else str(raw).encode())
        if out:
            yield out
        if len(page) < count:
            return
        last = page[-1][0]
        start = "(" + (last.decode() if isinstance(last, bytes) else str(last))


def earliest_ts(client: Any, key: str) -> float | None:
    """Timestamp (unix seconds) of the first entry still in the stream, or None if empty."""
    first = client.xrange(key, min="-", max="+", count=1)
    return _id_ms(first[0][0]) / 1000.0 if first else None


def latest_ts(client: Any, key: str) -> float | None:
    """Timestamp (unix seconds) of the last entry of the stream, or None if empty."""
    last = client.xrevrange(key, max="+", min="-", count=1)
    return _id_ms(last[0][0]) / 1000.0 if last else None


def sync_client(url: str) -> Any:
    """A blocking redis-py client for ``redis://``, ``rediss://``, ``unix://`` or
    ``redis+cluster://`` / ``rediss+cluster://`` URLs."""
    import redis
    from redis.cluster import RedisCluster

    if url.startswith(("redis+cluster://", "rediss+cluster://")):
        plain = url.replace("+cluster", "", 1)
        return RedisCluster.from_url(plain)
    return redis.Redis.from_url(url)
