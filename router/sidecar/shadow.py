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

A streamed shadow answer (an event stream, chunked, close-delimited or long) is consumed here in
the background, within the same bounds (the worker is busy until it ends; ``read_timeout`` and
``stream_max_duration`` of the upstream bound it), and its side records time to first byte,
duration, size and events like a served stream.

The noise floor (``experiment.noise_floor``) is a shadow job too: the champion asked a second
time on its shadow pool, filling the record's ``champion_repeat`` side (``variant`` label
``champion_repeat`` in the shadow metrics). A record with several jobs is captured when the
last one ends (``PendingRecord.waiting``).
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
from router.sidecar.upstream_stream import BodyStream
from router.sidecar.upstream_types import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamNotRetriedError,
    UpstreamTimeout,
    UpstreamTLSError,
)

log = logging.getLogger("router.shadow")


@dataclass(slots=True)
class ShadowJob:
    record: PendingRecord
    variant: str  # the side of the record it fills: the other model, or "champion_repeat"
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
    if isinstance(exc, UpstreamTLSError):
        return "tls"
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
            self.done(job.record)
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
            stream = resp.stream
            if stream is not None:
                try:
                    await stream.drain()
                except asyncio.CancelledError:
                    side.error = "shutdown: mid-stream"
                    self.done(job.record)
                    raise
                self._stream_side(job, side, stream, t0)
                self.done(job.record)
                return
            side.body = resp.body
            side.body_bytes = len(resp.body) if resp.body_bytes < 0 else resp.body_bytes
            if resp.first_byte_at:
                side.ttfb_ms = (resp.first_byte_at - t0) * 1000.0
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
        self.done(job.record)

    def done(self, record: PendingRecord) -> None:
        """One shadow job of ``record`` ended: capture it once its last job has (a record with
        a challenger shadow and a noise-floor repeat waits for both)."""
        record.waiting -= 1
        if record.waiting <= 0:
            self.submit(record)

    def _stream_side(self, job: ShadowJob, side: Side, stream: BodyStream, t0: float) -> None:
        m = self.metrics
        variant = job.variant
        side.streamed = True
        side.duration_ms = side.latency_ms = (stream.ended_at - t0) * 1000.0
        side.body_bytes = stream.size
        side.body = stream.body
        if stream.event_stream:
            side.events = stream.events
            m.inc("router_stream_events", (variant, "shadow"), stream.events)
        if stream.first_at:
            side.ttfb_ms = (stream.first_at - t0) * 1000.0
            m.observe("router_upstream_ttfb_seconds", stream.first_at - t0, (variant, "shadow"))
        m.inc("router_streams", (variant, "shadow", stream.outcome or "open"))
        m.inc("router_stream_bytes", (variant, "shadow"), stream.size)
        m.observe("router_upstream_latency_seconds", side.latency_ms / 1000.0, (variant, "shadow"))
        if stream.truncated:
            side.truncated = True
            side.response_bytes = stream.size
            m.inc("router_shadow_truncated", (variant,))
        if stream.error is not None:
            kind = error_kind(stream.error)
            side.error = f"{kind}: mid-stream: {stream.error}"[:300]
            m.inc("router_shadow_failed", (kind,))
            m.inc("router_upstream_errors", (variant, "shadow", kind))
        else:
            m.inc("router_shadow_completed", (variant,))
            if (side.status or 0) >= 500:
                m.inc("router_shadow_failed", ("5xx",))

    async def stop(self, timeout: float) -> None:
        """Stop taking jobs, let queued ones finish within ``timeout``, record the rest."""
        self.closing = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.queue.join(), timeout)
        left = self.queue.qsize()
        while not self.queue.empty():
            job = self.queue.get_nowait()
            job.target_side().error = "shutdown: not sent"
            self.done(job.record)
            self.queue.task_done()
        if left:
            log.warning("shadow: %d queued shadow requests not sent at shutdown", left)
            self.metrics.inc("router_shadow_dropped", ("shutdown",), left)
        for w in self.workers:
            w.cancel()
        for w in self.workers:
            with contextlib.suppress(asyncio.CancelledError):
                await w
