"""Consumer groups over capture streams, for continuous analyzers.

A continuous analyzer reads each entry once per group, acknowledges it when it has been folded
into the analyzer's state, and takes over what a crashed member of the group left unacknowledged::

    consumer = StreamConsumer(client, pairs_key("checkout"), group="analyzer", name="a-1")
    await consumer.ensure_group()          # XGROUP CREATE … MKSTREAM (idempotent)
    while True:
        for entry in await consumer.read():   # own pending first, then stale claims, then new
            fold(entry.doc)
        await consumer.ack([e.id for e in batch])

:meth:`StreamConsumer.read` returns, in this order:

1. on the first call, this consumer's own pending entries (``XREADGROUP … 0``): what it had read
   but not acknowledged before it restarted under the same name;
2. entries pending for longer than ``claim_idle_ms`` in *other* consumers of the group, taken
   over with ``XAUTOCLAIM`` (their consumer crashed or hangs);
3. new entries (``XREADGROUP … >``), waiting up to ``block_ms``.

Delivery is at least once: an entry is redelivered until acknowledged, so folds must tolerate a
repeat (analyzers key their state by ``request_id``). Works with ``redis.asyncio.Redis`` and
``RedisCluster`` (all commands touch one key).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from redis.exceptions import ResponseError


def _s(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


@dataclass(frozen=True, slots=True)
class GroupEntry:
    id: str
    doc: dict[str, Any] | None  # None when the field ``r`` is missing or not a JSON object
    claimed: bool = False  # taken over from another consumer


def _decode(raw_id: Any, fields: Any, claimed: bool = False) -> GroupEntry:
    doc = None
    if fields:
        raw = fields.get(b"r", fields.get("r"))
        if raw is not None:
            try:
                parsed = orjson.loads(raw)
                doc = parsed if isinstance(parsed, dict) else None
            except orjson.JSONDecodeError:
                doc = None
    return GroupEntry(_s(raw_id), doc, claimed)


class StreamConsumer:
    def __init__(
        self,
        client: Any,
        key: str,
        group: str,
        name: str,
        *,
        count: int = 500,
        block_ms: int | None = 1000,
        claim_idle_ms: int = 30_000,
    ) -> None:
        self.client = client
        self.key = key
        self.group = group
        self.name = name
        self.count = count
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self._own_pending_done = False
        self._claim_cursor = "0-0"

    async def ensure_group(self, start: str = "0") -> bool:
        """Create the group (and the stream if needed) reading from ``start`` (``0``: the whole
        stream, ``$``: only new entries). False when it already existed."""
        try:
            await self.client.xgroup_create(self.key, self.group, id=start, mkstream=True)
            return True
        except ResponseError as exc:
            if "BUSYGROUP" in str(exc):
                return False
            raise

    async def _own_pending(self) -> list[GroupEntry]:
        resp = await self.client.xreadgroup(
            self.group, self.name, {self.key: "0"}, count=self.count
        )
        entries = [_decode(i, f) for _k, msgs in resp or [] for i, f in msgs]
        if len(entries) < self.count:
            self._own_pending_done = True
        return entries

    async def claim_stale(self) -> list[GroupEntry]:
        """``XAUTOCLAIM`` entries idle for ``claim_idle_ms`` in other (crashed) consumers."""
        resp = await self.client.xautoclaim(
            self.key, self.group, self.name, self.claim_idle_ms,
            start_id=self._claim_cursor, count=self.count,
        )  # fmt: skip
        cursor, msgs = resp[0], resp[1]
        self._claim_cursor = _s(cursor)
        # entries deleted from the stream while pending come back as None fields: ack them away
        gone = [_s(i) for i, f in msgs if f is None]
        if gone:
            await self.ack(gone)
        return [_decode(i, f, claimed=True) for i, f in msgs if f is not None]

    async def read(self) -> list[GroupEntry]:
        if not self._own_pending_done:
            own = await self._own_pending()
            if own:
                return own
        claimed = await self.claim_stale()
        if claimed:
            return claimed
        resp = await self.client.xreadgroup(
            self.group, self.name, {self.key: ">"}, count=self.count, block=self.block_ms
        )
        return [_decode(i, f) for _k, msgs in resp or [] for i, f in msgs]

    async def ack(self, ids: list[str]) -> int:
        if not ids:
            return 0
        return int(await self.client.xack(self.key, self.group, *ids))

    async def pending_count(self) -> int:
        info = await self.client.xpending(self.key, self.group)
        return int(info["pending"] if isinstance(info, dict) else info[0])
