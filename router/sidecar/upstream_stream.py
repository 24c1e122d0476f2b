"""A streamed upstream answer: the body passed on as it arrives (nginx's ``proxy_buffering off``).

When an upstream answers with a chunked or close-delimited body, ``Content-Type:
text/event-stream``, or a Content-Length over the pool's ``stream_over`` bytes, the connection
(:class:`~router.sidecar.upstream_conn.Conn`) hands the response head to the caller at once and
then feeds each body read to a :class:`BodyStream`:

* Until a sink is attached (the client connection, or :meth:`BodyStream.drain` for a shadow),
  reads are held, and reading the upstream pauses once more than ``high`` bytes wait.
* Attached, every read goes straight to the sink from the protocol callback (no task switch per
  event). The sink pauses the stream while its own write buffer is above its high-water mark
  (:meth:`pause` / :meth:`resume`): the upstream socket is then not read, so memory per stream is
  bounded by the sink's high-water mark plus one read.
* The first ``keep_max`` bytes are kept for capture (``truncated`` says when more came);
  ``size``, ``first_at`` (time of the first body byte) and, for an event stream, ``events``
  (blank-line-terminated events) are measured.
* ``read_timeout`` bounds the pause between two upstream reads (not counted while the sink holds
  the stream paused) and ``max_duration`` the whole stream; either ends it with
  :class:`UpstreamTimeout`.
* It ends once: ``complete`` (the body ended as framed, or EOF of a close-delimited body),
  ``upstream_error`` (connection lost mid-body, timeout, pool closed) or an :meth:`abort` by the
  consumer (``client_aborted``, or ``fallback``). The connection goes back to its pool only after
  a complete body on a keep-alive connection; otherwise it is closed, never reused.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Protocol

from router.sidecar.upstream_errors import UpstreamError, UpstreamTimeout


class Conn(Protocol):
    """What a stream needs of its upstream connection (:class:`~router.sidecar.upstream_conn.
    Conn`): the socket (to pause reading), a way to abort it, its pool's name."""

    transport: Any
    stream: BodyStream | None

    @property
    def upstream(self) -> str: ...

    def kill(self) -> None: ...


class StreamSink(Protocol):
    """Where a stream's bytes go (the client connection of the HTTP server)."""

    def stream_data(self, data: bytes) -> None: ...

    def stream_end(self, ok: bool) -> None: ...


class _Discard:
    """The sink of a shadow stream: the bytes are measured and kept by the stream itself."""

    def stream_data(self, data: bytes) -> None:
        pass

    def stream_end(self, ok: bool) -> None:
        pass


_DISCARD = _Discard()


def _straddling_events(tail: bytes, data: bytes) -> int:
    """Blank lines (``\\n\\n`` or ``\\n\\r\\n``) that begin in ``tail`` (the last two bytes of the
    previous read) and end in ``data``."""
    joined = tail + data[:2]
    cut = len(tail)
    n = 0
    for sep in (b"\n\n", b"\n\r\n"):
        start = joined.find(sep)
        while start != -1:
            if start < cut < start + len(sep):
                n += 1
            start = joined.find(sep, start + 1)
    return n


class BodyStream:
    __slots__ = (
        "_conn",
        "_done",
        "_pending",
        "_pending_bytes",
        "_release",
        "_timer",
        "dropped_trailers",
        "ended_at",
        "error",
        "event_stream",
        "events",
        "first_at",
        "high",
        "keep_max",
        "kept",
        "kept_bytes",
        "last_read",
        "length",
        "loop",
        "max_duration",
        "on_end",
        "origin",
        "outcome",
        "paused_by_buffer",
        "paused_by_sink",
        "read_timeout",
        "sink",
        "size",
        "started_at",
        "tail",
        "truncated",
    )

    def __init__(
        self,
        conn: Conn,
        release: Callable[[Any], None],
        loop: asyncio.AbstractEventLoop,
        *,
        length: int,
        event_stream: bool,
        keep_max: int,
        high: int,
        read_timeout: float,
        max_duration: float,
    ) -> None:
        self._conn: Conn | None = conn
        self._release = release
        self.loop = loop
        self.length = length  # the upstream's Content-Length, -1 when not framed by one
        self.event_stream = event_stream
        self.keep_max = keep_max
        self.high = high
        self.read_timeout = read_timeout
        self.max_duration = max_duration
        self.sink: StreamSink | None = None
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self.kept: list[bytes] = []
        self.kept_bytes = 0
        self.truncated = False
        self.size = 0
        self.events = 0
        self.tail = b""
        self.started_at = self.last_read = time.perf_counter()
        self.origin = self.started_at  # the consumer's start of the call (for its timings)
        self.first_at = 0.0
        self.ended_at = 0.0
        self.paused_by_sink = False
        self.paused_by_buffer = False
        self.outcome: str | None = None  # complete | upstream_error | client_aborted | ...
        self.error: UpstreamError | None = None
        self.dropped_trailers = 0
        self.on_end: Callable[[BodyStream], None] | None = None
        self._done: asyncio.Future[bool] = loop.create_future()
        self._timer: asyncio.TimerHandle | None = loop.call_later(
            min(read_timeout, max_duration), self._check_time
        )

    # ---- fed by the upstream connection ---------------------------------------------------
    def feed(self, data: bytes) -> None:
        n = len(data)
        now = time.perf_counter()
        if not self.size:
            self.first_at = now
        self.last_read = now
        self.size += n
        if self.event_stream:
            c = data.count(b"\n\n") + data.count(b"\n\r\n")
            if self.tail and data[:1] in (b"\n", b"\r"):
                c += _straddling_events(self.tail, data)
            self.events += c
            self.tail = data[-2:]
        room = self.keep_max - self.kept_bytes
        if room > 0:
            piece = data if n <= room else data[:room]
            self.kept.append(piece)
            self.kept_bytes += len(piece)
            if n > room:
                self.truncated = True
        elif n:
            self.truncated = True
        sink = self.sink
        if sink is not None:
            sink.stream_data(data)
            return
        self._pending.append(data)
        self._pending_bytes += n
        if self._pending_bytes > self.high and not self.paused_by_buffer:
            self.paused_by_buffer = True
            self._pause_upstream()

    def finish(self, dropped_trailers: int = 0) -> None:
        """The body ended as framed (or at EOF of a close-delimited body)."""
        self.dropped_trailers = dropped_trailers
        self._end("complete", None)

    def fail(self, exc: UpstreamError) -> None:
        self._end("upstream_error", exc)

    # ---- used by the consumer -------------------------------------------------------------
    def attach(self, sink: StreamSink) -> None:
        """Send what arrived so far to ``sink``, then every read as it comes."""
        self.sink = sink
        pending, self._pending = self._pending, []
        self._pending_bytes = 0
        for data in pending:
            sink.stream_data(data)
        if self.outcome is not None:
            sink.stream_end(self.outcome == "complete")
            return
        if self.paused_by_buffer:
            self.paused_by_buffer = False
            if not self.paused_by_sink:
                self._resume_upstream()

    def pause(self) -> None:
        """The sink's write buffer is full: stop reading the upstream."""
        if not self.paused_by_sink:
            self.paused_by_sink = True
            self._pause_upstream()

    def resume(self) -> None:
        if self.paused_by_sink:
            self.paused_by_sink = False
            self.last_read = time.perf_counter()
            if not self.paused_by_buffer:
                self._resume_upstream()

    def abort(self, reason: str = "client_aborted") -> None:
        """The consumer gives up (the client went away, or a fallback replaces this answer):
        the upstream connection is closed, never reused."""
        if self.outcome is not None:
            return
        self.sink = None
        conn = self._conn
        if conn is not None:
            conn.kill()
        self._end(reason, None)

    def when_done(self, callback: Callable[[BodyStream], None]) -> None:
        """Call ``callback(self)`` once the stream has ended (at once if it already has)."""
        if self.outcome is not None:
            callback(self)
        else:
            self.on_end = callback

    async def wait(self) -> bool:
        """Until the stream ends; True when the body was complete."""
        return await asyncio.shield(self._done)

    async def drain(self) -> bool:
        """Consume the stream without a client (a shadow): measured and kept, not sent."""
        self.attach(_DISCARD)
        try:
            return await asyncio.shield(self._done)
        except asyncio.CancelledError:
            self.abort("shutdown")
            raise

    @property
    def ended(self) -> bool:
        return self.outcome is not None

    @property
    def body(self) -> bytes:
        """The kept bytes (at most ``keep_max``)."""
        kept = self.kept
        return kept[0] if len(kept) == 1 else b"".join(kept)

    # ---- internals --------------------------------------------------------------------------
    def _pause_upstream(self) -> None:
        conn = self._conn
        if conn is not None and conn.transport is not None:
            conn.transport.pause_reading()

    def _resume_upstream(self) -> None:
        conn = self._conn
        if conn is not None and conn.transport is not None:
            conn.transport.resume_reading()

    def _check_time(self) -> None:
        self._timer = None
        if self.outcome is not None:
            return
        now = time.perf_counter()
        over = self.started_at + self.max_duration - now
        if over <= 0:
            self._timeout(f"streamed answer exceeded {self.max_duration:g}s")
            return
        if self.paused_by_sink or self.paused_by_buffer:
            idle_left = self.read_timeout  # the consumer holds the stream: not the upstream's
        else:
            idle_left = self.last_read + self.read_timeout - now
            if idle_left <= 0:
                self._timeout(f"no data from the upstream for {self.read_timeout:g}s")
                return
        self._timer = self.loop.call_later(max(0.001, min(idle_left, over)), self._check_time)

    def _timeout(self, message: str) -> None:
        conn = self._conn
        name = conn.upstream if conn is not None else ""
        if conn is not None:
            conn.kill()
        self._end("upstream_error", UpstreamTimeout(message, name))

    def _end(self, outcome: str, exc: UpstreamError | None) -> None:
        if self.outcome is not None:
            return
        self.outcome = outcome
        self.error = exc
        self.ended_at = time.perf_counter()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.stream = None
            if outcome != "complete":
                conn.kill()
            elif (self.paused_by_sink or self.paused_by_buffer) and conn.transport is not None:
                conn.transport.resume_reading()  # (a paused socket must not go back idle)
            self._release(conn)
        sink = self.sink
        if sink is not None:
            sink.stream_end(outcome == "complete")
        cb, self.on_end = self.on_end, None
        if cb is not None:
            cb(self)
        if not self._done.done():
            self._done.set_result(outcome == "complete")
