"""Shadow dispatcher: mirrored requests run here, never on the hot path.

The hot path hands a job to :meth:`ShadowDispatcher.offer`, a ``put_nowait`` on a bounded queue;
when the queue is full the job is dropped and counted and the record is captured without the
shadow side. A fixed number of worker tasks (``limits.shadow_concurrency``) send the jobs through
a connection pool reserved for shadow traffic, so a slow or dead shadow model cannot exhaust the
connections the served path uses. Each finished job fills the other side of the record and hands
the record to capture.

Shadow answers are bounded: the shadow pools keep at most ``limits.shadow_max_response_bytes`` of
an answer's body and read the rest without keeping it (the latency still covers the whole answer).
Such a side is recorded with ``truncated: true`` and ``response_bytes`` (the full body size) and
counted in ``router_shadow_truncated_total``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from router.capture.records import PendingRecord, Side
from router.metrics import Metrics
from router.sidecar.upstream import UpstreamPool
from router.sidecar.upstream_types import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamNotRetriedError,
    UpstreamTimeout,
)

log = logging.getLogger("router.shadow")


@dataclass(slots=True)
class ShadowJob:
    record: PendingRecord
    variant: str  # the model that receives the shadow copy
    pool: UpstreamPool
    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    timeout: float
    side: Side | None = None  # the side to fill; default: the record's side named ``variant``

    def target_side(self) -> Side:
        return self.side if self.side is not None else getattr(self.record, self.variant)


def error_kind(exc: BaseException) -> str:
    if isinstance(exc, UpstreamTimeout):
        return "timeout"
    if isinstance(exc, UpstreamConnectError):
        return "connect"
    if isinstance(exc, UpstreamNotRetriedError):
        return "not_retried"
    if isinstance(exc, UpstreamError):
        return "protocol"
    return type(exc).__name__


class ShadowDispatcher:
    def __init__(
        self,
        metrics: Metrics,
        submit: Callable[[PendingRecord], bool],
        queue_size: int,
        concurrency: int,
    ) -> None:
        self.metrics = metrics
        self.submit = submit
        self.queue: asyncio.Queue[ShadowJob] = asyncio.Queue(queue_size)
        self.concurrency = concurrency
        self.workers: list[asyncio.Task[None]] = []
        self.closing = False
        self.active = 0

    def start(self) -> None:
        self.workers = [
            asyncio.create_task(self._worker(), name=f"shadow-{i}") for i in range(self.concurrency)
        ]

    def offer(self, job: ShadowJob) -> bool:
        if self.closing:
            self.metrics.inc("router_shadow_dropped", ("shutdown",))
            return False
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:
            self.metrics.inc("router_shadow_dropped", ("queue_full",))
            return False
        self.metrics.inc("router_shadow_dispatched", (job.variant,))
        return True

    async def _worker(self) -> None:
        while True:
            job = await self.queue.get()
            self.active += 1
            try:
                await self._run(job)
            finally:
                self.active -= 1
                self.queue.task_done()

    async def _run(self, job: ShadowJob) -> None:
        side = job.target_side()
        t0 = time.perf_counter()
        try:
            resp = await job.pool.request(
                job.method, job.target, job.headers, job.body, timeout=job.timeout
            )
        except asyncio.CancelledError:
            side.error = "shutdown"
            self.submit(job.record)
            raise
        except Exception as exc:
            kind = error_kind(exc)
            side.latency_ms = (time.perf_counter() - t0) * 1000.0
            side.error = f"{kind}: {exc}"[:300]
            self.metrics.inc("router_shadow_failed", (kind,))
            self.metrics.inc("router_upstream_errors", (job.variant, "shadow", kind))
        else:
            elapsed = time.perf_counter() - t0
            side.latency_ms = elapsed * 1000.0
            side.status = resp.status
            side.body = resp.body
            if resp.truncated:
                side.truncated = True
                side.response_bytes = resp.body_bytes
                self.metrics.inc("router_shadow_truncated", (job.variant,))
            self.metrics.observe(
                "router_upstream_latency_seconds", elapsed, (job.variant, "shadow")
            )
            self.metrics.inc("router_shadow_completed", (job.variant,))
            if resp.status >= 500:
                self.metrics.inc("router_shadow_failed", ("5xx",))
        self.submit(job.record)

    async def stop(self, timeout: float) -> None:
        """Stop taking jobs, let queued ones finish within ``timeout``, record the rest."""
        self.closing = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.queue.join(), timeout)
        left = self.queue.qsize()
        while not self.queue.empty():
            job = self.queue.get_nowait()
            job.target_side().error = "shutdown: not sent"
            self.submit(job.record)
            self.queue.task_done()
        if left:
            log.warning("shadow: %d queued shadow requests not sent at shutdown", left)
            self.metrics.inc("router_shadow_dropped", ("shutdown",), left)
        for w in self.workers:
            w.cancel()
        for w in self.workers:
            with contextlib.suppress(asyncio.CancelledError):
                await w
