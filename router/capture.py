"""Capture writer: records and outcomes to Redis streams, in batches, off the hot path.

The hot path calls :meth:`CaptureWriter.submit`, which is a bounded ``deque.append`` (full queue:
the item is dropped and counted, the request is never slowed). A background task wakes every
``batch_interval_ms``, finalizes pending records (JSON parsing, prediction extraction, contract
diff, field redaction: see :mod:`router.records`) and writes them with pipelined ``XADD`` (one
round trip per batch, ``MAXLEN ~`` trimming). Each stream entry has a single field ``r`` holding
the record's JSON.

Stream keys: ``<experiment>:pairs`` and ``<experiment>:outcomes``.

When Redis fails, the batch is kept and retried with exponential backoff; meanwhile the bounded
queue keeps accepting until full, and ``healthy`` turns false (``/readyz`` reports it). Every
error, retry and drop is counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from router.config import CaptureConfig
from router.metrics import Metrics
from router.records import FinalizeOptions, PendingRecord, finalize

log = logging.getLogger("router.capture")

Item = tuple[str, Any]  # (stream key, PendingRecord | dict)


def pairs_key(experiment: str) -> str:
    return f"{experiment}:pairs"


def outcomes_key(experiment: str) -> str:
    return f"{experiment}:outcomes"


def make_client(url: str) -> aioredis.Redis:
    return aioredis.Redis.from_url(
        url, socket_timeout=2.0, socket_connect_timeout=1.0, retry_on_timeout=False
    )


class CaptureWriter:
    def __init__(
        self,
        cfg: CaptureConfig,
        redis_url: str,
        metrics: Metrics,
        options: FinalizeOptions,
        queue_size: int,
    ) -> None:
        self.cfg = cfg
        self.redis_url = redis_url
        self.metrics = metrics
        self.options = options
        self.queue: deque[Item] = deque()
        self.queue_size = queue_size
        self.client: aioredis.Redis | None = None
        self.healthy = True
        self.last_error: str | None = None
        self.last_success: float | None = None
        self._retry: list[tuple[str, bytes]] = []
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._interval = cfg.batch_interval_ms / 1000.0
        self._backoff = 0.0

    # ---- hot path -------------------------------------------------------------------------
    def submit(self, key: str, item: Any) -> bool:
        if len(self.queue) >= self.queue_size:
            self.metrics.inc("router_capture_dropped", ("queue_full",))
            return False
        self.queue.append((key, item))
        self.metrics.inc("router_capture_queued", (key.rsplit(":", 1)[-1],))
        return True

    def submit_record(self, rec: PendingRecord) -> bool:
        return self.submit(pairs_key(rec.experiment), rec)

    # ---- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        self.client = make_client(self.redis_url)
        self._task = asyncio.create_task(self._run(), name="capture-writer")

    async def stop(self, timeout: float = 10.0) -> None:
        """Flush everything queued (bounded by ``timeout``), then close."""
        self._stopping = True
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                left = len(self.queue) + len(self._retry)
                log.error("capture flush timed out; %d records not written", left)
                self.metrics.inc("router_capture_dropped", ("shutdown",), left)
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        if self.client is not None:
            await self.client.aclose()

    async def ping(self) -> bool:
        if self.client is None:
            return False
        try:
            return bool(await asyncio.wait_for(self.client.ping(), 1.0))
        except (RedisError, OSError, TimeoutError):
            return False

    # ---- background -----------------------------------------------------------------------
    def _encode(self, item: Item) -> tuple[str, bytes] | None:
        key, obj = item
        try:
            doc = finalize(obj, self.options) if isinstance(obj, PendingRecord) else obj
            return key, orjson.dumps(doc)
        except (TypeError, ValueError, orjson.JSONEncodeError) as exc:
            log.error("unserialisable capture item dropped: %s", exc)
            self.metrics.inc("router_capture_dropped", ("unserialisable",))
            return None

    def _next_batch(self) -> list[tuple[str, bytes]]:
        if self._retry:
            batch, self._retry = self._retry, []
            return batch
        out: list[tuple[str, bytes]] = []
        q = self.queue
        n = min(len(q), self.cfg.batch_size)
        for _ in range(n):
            enc = self._encode(q.popleft())
            if enc is not None:
                out.append(enc)
        return out

    async def _write(self, batch: list[tuple[str, bytes]]) -> None:
        assert self.client is not None
        maxlen = self.cfg.stream_maxlen
        async with self.client.pipeline(transaction=False) as pipe:
            for key, data in batch:
                pipe.xadd(key, {"r": data}, maxlen=maxlen, approximate=maxlen is not None)
            await pipe.execute()

    async def _run(self) -> None:
        while True:
            self.metrics.set("router_capture_queue_depth", float(len(self.queue)))
            if not self.queue and not self._retry:
                if self._stopping:
                    return
                await asyncio.sleep(self._interval)
                continue
            batch = self._next_batch()
            if not batch:
                continue
            try:
                await self._write(batch)
            except (RedisError, OSError, TimeoutError) as exc:
                self._retry = batch
                kind = type(exc).__name__
                self.metrics.inc("router_capture_errors", (kind,))
                if self.healthy:
                    log.error("capture: Redis write failed (%s: %s); retrying", kind, exc)
                self.healthy = False
                self.metrics.set("router_capture_healthy", 0.0)
                self.last_error = f"{kind}: {exc}"
                self._backoff = min(2.0, max(0.05, self._backoff * 2))
                if self._stopping and self._backoff >= 2.0:
                    left = len(batch) + len(self.queue)
                    log.error("capture: giving up at shutdown, %d records not written", left)
                    self.metrics.inc("router_capture_dropped", ("shutdown",), left)
                    self._retry = []
                    self.queue.clear()
                    return
                await asyncio.sleep(self._backoff)
                continue
            per_stream: dict[str, int] = {}
            for key, _ in batch:
                stream = key.rsplit(":", 1)[-1]
                per_stream[stream] = per_stream.get(stream, 0) + 1
            for stream, n in per_stream.items():
                self.metrics.inc("router_capture_written", (stream,), n)
            if not self.healthy:
                log.warning("capture: Redis writes recovered")
            self.healthy = True
            self.metrics.set("router_capture_healthy", 1.0)
            self._backoff = 0.0
            self.last_success = time.time()
            if len(self.queue) < self.cfg.batch_size and not self._stopping:
                await asyncio.sleep(self._interval)
