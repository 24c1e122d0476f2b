"""Minimal reader of a time window of a capture stream (XRANGE over ms stream IDs).

Kept small and isolated so it can be swapped for ``router/reader.py`` when that lands."""

from __future__ import annotations

from typing import Any

import orjson

PAGE = 2000


async def read_window(
    redis: Any, key: str, since: float, until: float, *, limit: int | None = None
) -> list[dict[str, Any]]:
    """Entries of ``key`` with IDs in ``[since, until]`` (unix seconds), decoded from field ``r``.
    Unparsable entries are skipped."""
    out: list[dict[str, Any]] = []
    start = f"{int(since * 1000)}-0"
    end = f"{int(until * 1000)}"
    while True:
        batch = await redis.xrange(key, min=start, max=end, count=PAGE)
        for _id, fields in batch:
            raw = fields.get(b"r") if b"r" in fields else fields.get("r")
            if raw is None:
                continue
            try:
                doc = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            if isinstance(doc, dict):
                out.append(doc)
        if limit is not None and len(out) >= limit:
            return out[:limit]
        if len(batch) < PAGE:
            return out
        last = batch[-1][0]
        last = last.decode() if isinstance(last, bytes) else str(last)
        start = "(" + last
