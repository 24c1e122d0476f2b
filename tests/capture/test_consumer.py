"""Consumer groups: each entry once per group, acknowledgement, takeover after a crash."""

from __future__ import annotations

import asyncio

import orjson
import redis.asyncio as aioredis

from router.capture.consumer import StreamConsumer
from router.capture.keys import pairs_key


async def test_group_reads_acks_and_recovers_a_crashed_consumers_entries(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    key = pairs_key("t")
    try:
        for i in range(30):
            await client.xadd(key, {"r": orjson.dumps({"request_id": f"r{i}"})})
        a = StreamConsumer(client, key, "analyzer", "a", count=10, block_ms=50, claim_idle_ms=200)
        b = StreamConsumer(client, key, "analyzer", "b", count=10, block_ms=50, claim_idle_ms=200)
        assert await a.ensure_group() is True
        assert await b.ensure_group() is False  # already there: idempotent

        got_a = await a.read()  # "a" reads 10 and crashes before acknowledging
        assert [e.doc["request_id"] for e in got_a if e.doc] == [f"r{i}" for i in range(10)]
        seen_b: list[str] = []
        while batch := await b.read():  # "b" gets the rest, each entry once
            seen_b += [e.doc["request_id"] for e in batch if e.doc]
            await b.ack([e.id for e in batch])
        assert seen_b == [f"r{i}" for i in range(10, 30)]
        assert await b.pending_count() == 10  # a's entries

        await asyncio.sleep(0.25)  # a's entries are now idle longer than claim_idle_ms
        claimed = await b.read()
        assert all(e.claimed for e in claimed)
        assert [e.doc["request_id"] for e in claimed if e.doc] == [f"r{i}" for i in range(10)]
        assert await b.ack([e.id for e in claimed]) == 10
        assert await b.pending_count() == 0

        # a consumer restarting under its own name first gets back what it had not acknowledged
        c = StreamConsumer(client, key, "analyzer", "c", count=5, block_ms=50)
        await client.xadd(key, {"r": orjson.dumps({"request_id": "late"})})
        first = await c.read()
        assert [e.doc["request_id"] for e in first if e.doc] == ["late"]
        c2 = StreamConsumer(client, key, "analyzer", "c", count=5, block_ms=50)
        again = await c2.read()
        assert [e.id for e in again] == [e.id for e in first]  # redelivered: never acked
        await c2.ack([e.id for e in again])
        assert await c2.read() == []
    finally:
        await client.aclose()
