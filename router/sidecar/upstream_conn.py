"""One keep-alive HTTP/1.1 connection to an upstream, on ``asyncio.Protocol`` + httptools (llhttp).

:class:`Conn` carries at most one exchange at a time for its pool
(:class:`~router.sidecar.upstream.UpstreamPool`, seen here only through :class:`ConnOwner`):
it writes the pre-joined request of :func:`build_request` and parses the answer with a reused
per-connection ``httptools.HttpResponseParser``.

* Responses are framed by Content-Length, chunked transfer-encoding or read-until-close. HEAD
  answers and 1xx/204/304 have no body. Interim 1xx answers (100 Continue, 103 Early Hints) are
  skipped; the final answer is returned.
* A connection is reused only if the exchange completed cleanly and llhttp says keep-alive
  (no ``Connection: close``, not HTTP/1.0 without keep-alive, not read-until-close). Anything
  else (timeouts, cancellation, parse errors, unsolicited bytes) closes it, so a connection with a
  half-read response never returns to the pool.
* Trailers of a chunked answer are read and dropped (``UpstreamResponse.dropped_trailers``
  counts them); they never become headers.
* An unsolicited ``101 Switching Protocols`` (we never ask for an upgrade) fails the exchange.
* Streaming (pools with ``stream_over``): an answer that is chunked, close-delimited,
  ``text/event-stream`` or longer than ``stream_over`` bytes is handed over at its headers with a
  :class:`~router.sidecar.upstream_stream.BodyStream` that receives the body as it arrives; the
  connection stays leased until the stream ends (:meth:`ConnOwner.stream_released`).
* ``max_response_body`` (the shadow pools): at most that many body bytes are kept; the rest is
  read and discarded, the answer is marked ``truncated`` and ``body_bytes`` has its full size.
* The request's own ``Content-Length`` / ``Transfer-Encoding`` headers are replaced: the body
  is always sent whole with a Content-Length computed here (omitted for GET/HEAD with an empty
  body). All other headers are sent as given, in order (the caller sets Host).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from typing import Protocol

import httptools

from router.sidecar.upstream_stream import BodyStream
from router.sidecar.upstream_types import (
    UpstreamError,
    UpstreamProtocolError,
    UpstreamResponse,
    UpstreamTimeout,
)


class Lost(Exception):
    """Internal to the pool: the connection went away before any response byte (retryable?).
    ``sent`` is False when the request provably never left (closing connection, failed write)."""

    def __init__(self, sent: bool) -> None:
        super().__init__()
        self.sent = sent


_NO_CL_METHODS = frozenset((b"GET", b"HEAD"))
_CONTENT_LENGTH = b"content-length"
_TRANSFER_ENCODING = b"transfer-encoding"
_CONTENT_TYPE = b"content-type"


def build_request(
    method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes
) -> bytes:
    parts = [method, b" ", target, b" HTTP/1.1\r\n"]
    append = parts.append
    for name, value in headers:
        n = len(name)
        if (n == 14 or n == 17) and name.lower() in (_CONTENT_LENGTH, _TRANSFER_ENCODING):
            continue
        append(name)
        append(b": ")
        append(value)
        append(b"\r\n")
    if body or method not in _NO_CL_METHODS:
        append(b"Content-Length: %d\r\n\r\n" % len(body))
        append(body)
    else:
        append(b"\r\n")
    return b"".join(parts)


class ConnOwner(Protocol):
    """What a connection needs of its pool."""

    @property
    def upstream(self) -> str: ...

    @property
    def max_response_body(self) -> int | None: ...

    stream_over: int | None
    stream_keep: int
    stream_high: int
    read_timeout: float
    stream_max_duration: float

    def stream_released(self, conn: Conn) -> None: ...

    def conn_made(self, conn: Conn) -> None: ...

    def conn_lost(self, conn: Conn) -> None: ...

    def watch(
        self, deadline: float, conn: Conn, waiter: asyncio.Future[UpstreamResponse]
    ) -> None: ...


class Conn(asyncio.Protocol):
    """One upstream connection; at most one exchange in flight."""

    __slots__ = (
        "alive",
        "body",
        "broken",
        "chunked",
        "complete",
        "ctype",
        "first_at",
        "framed",
        "got_bytes",
        "head",
        "headers",
        "headers_done",
        "interim",
        "keep_alive",
        "leased",
        "length_raw",
        "loop",
        "parser",
        "pool",
        "reason",
        "reset_parser",
        "reused",
        "stream",
        "stream_over",
        "timer",
        "trailer_mark",
        "transport",
        "unsent",
        "waiter",
    )

    def __init__(self, pool: ConnOwner, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[UpstreamResponse] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.alive = False
        self.leased = True
        self.reused = False
        self.broken = False
        self.complete = True  # no exchange in flight
        self.head = False
        self.got_bytes = False
        self.headers_done = False
        self.interim = False
        self.framed = False
        self.keep_alive = False
        self.reset_parser = False
        self.unsent = False
        self.trailer_mark = -1
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.stream: BodyStream | None = None
        self.stream_over = pool.stream_over  # None: never stream (a pool setting)
        self.length_raw: bytes | None = None  # the answer's Content-Length value
        self.ctype: bytes | None = None  # its Content-Type value
        self.chunked = False
        self.first_at = 0.0  # perf_counter of the first body byte of a buffered answer

    # ---- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance check here
        self.transport = transport  # type: ignore[assignment]
        self.alive = True
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.pool.conn_made(self)

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        if self.complete:
            # bytes while no exchange is in flight: the stream is out of sync
            self.kill()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # 101 Switching Protocols (never asked for): the answer is complete, the
            # connection is no longer HTTP
            self.kill()
            self.fail(UpstreamProtocolError("unexpected protocol upgrade", self.pool.upstream))
            return
        except httptools.HttpParserError as exc:
            self.kill()
            self.fail(UpstreamProtocolError(f"malformed response: {exc!r}", self.pool.upstream))
            return
        if self.reset_parser:
            # a HEAD answer ends at its headers; llhttp does not know the request was HEAD
            self.reset_parser = False
            self.parser = httptools.HttpResponseParser(self)

    def eof_received(self) -> bool | None:
        self.alive = False  # never pick it again: the transport closes now
        return None  # close the transport; connection_lost decides what EOF meant

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False
        self.transport = None
        waiter = self.waiter
        stream = self.stream
        if stream is not None:
            self.stream = None
            if not self.framed:
                self.keep_alive = False
                stream.finish()  # a read-until-close body: EOF ends it
            else:
                stream.fail(UpstreamProtocolError("connection lost mid-body", self.pool.upstream))
        elif not self.complete and waiter is not None and not waiter.done():
            name = self.pool.upstream
            if self.headers_done and not self.framed and not self.head:
                self.keep_alive = False  # read-until-close body: EOF ends it
                self._finish()
            elif not self.got_bytes:
                self.fail(Lost(not self.unsent))
            elif self.headers_done:
                self.fail(UpstreamProtocolError("connection lost mid-body", name))
            else:
                self.fail(UpstreamProtocolError("connection lost mid-headers", name))
        self.complete = True
        self.pool.conn_lost(self)

    # ---- httptools callbacks ---------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.complete:
            # a second response to a single request: never reuse this connection
            self.broken = True
            raise UpstreamProtocolError("unsolicited response bytes", self.pool.upstream)

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))
        n = len(name)
        if n == 14:
            if name.lower() == _CONTENT_LENGTH:
                self.framed = True
                self.length_raw = value  # (parsed only when a streaming pool must decide)
        elif n == 12:
            if name.lower() == _CONTENT_TYPE:
                self.ctype = value
        elif n == 17 and name.lower() == _TRANSFER_ENCODING and b"chunked" in value.lower():
            self.framed = True
            self.chunked = True

    def on_headers_complete(self) -> None:
        parser = self.parser
        status = parser.get_status_code()
        if status < 200:
            if status == 101:
                self.kill()
                self.fail(UpstreamProtocolError("unsolicited 101 Switching Protocols",
                                                 self.pool.upstream))  # fmt: skip
                return
            self.interim = True
            return
        self.headers_done = True
        self.trailer_mark = len(self.headers)
        self.keep_alive = parser.should_keep_alive()
        if status in (204, 304) or status < 200:
            self.framed = True  # llhttp ends these at the headers
        if self.head:
            self.reset_parser = True
            self._finish()
            return
        over = self.stream_over
        if over is not None and status not in (204, 304):
            raw = self.length_raw
            if self.chunked or raw is None:
                self._start_stream(status, -1)
                return
            length = int(raw)  # (llhttp has checked it is a number)
            ctype = self.ctype
            if length > over or (ctype is not None and b"event-stream" in ctype.lower()):
                self._start_stream(status, length)

    def _start_stream(self, status: int, length: int) -> None:
        """Hand the head over now; the body follows through a :class:`BodyStream`."""
        waiter = self.waiter
        if waiter is None or waiter.done():
            self.kill()  # the caller is gone (cancelled): nobody would consume the body
            return
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        pool = self.pool
        headers, self.headers = self.headers, []  # later header lines are trailers: dropped
        self.trailer_mark = 0
        self.stream = stream = BodyStream(
            self, pool.stream_released, self.loop,
            length=length,
            event_stream=self.ctype is not None and b"event-stream" in self.ctype.lower(),
            keep_max=pool.stream_keep, high=pool.stream_high, read_timeout=pool.read_timeout,
            max_duration=pool.stream_max_duration,
        )  # fmt: skip
        waiter.set_result(
            UpstreamResponse(status, self.reason, headers, b"", self.keep_alive, stream=stream)
        )

    def on_body(self, body: bytes) -> None:
        stream = self.stream
        if stream is not None:
            stream.feed(body)
            return
        if not self.body:
            self.first_at = time.perf_counter()
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            self.framed = False
            self.reason = b""
            self.headers = []
            return
        stream = self.stream
        if stream is not None:
            self.complete = True
            trailers, self.headers = self.headers, []
            stream.finish(len(trailers))
            return
        if not self.complete:
            self._finish()

    # ---- exchange --------------------------------------------------------------------------
    def start(self, data: bytes, head: bool, deadline: float) -> asyncio.Future[UpstreamResponse]:
        loop = self.loop
        self.waiter = waiter = loop.create_future()
        if not self.alive or self.broken:
            self.kill()
            waiter.set_exception(Lost(False))
            return waiter
        self.complete = False
        self.head = head
        self.got_bytes = False
        self.headers_done = False
        self.framed = False
        self.reason = b""
        self.headers = []
        self.body = []
        self.length_raw = None
        self.ctype = None
        self.chunked = False
        self.first_at = 0.0
        self.pool.watch(deadline, self, waiter)
        t = self.transport
        t.write(data)  # type: ignore[union-attr]
        # a write that fails at once closes the transport: not a byte of it left this host
        self.unsent = t.is_closing()  # type: ignore[union-attr]
        return waiter

    def _finish(self) -> None:
        self.complete = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        body = self.body
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            resp = UpstreamResponse(
                self.parser.get_status_code(),
                self.reason,
                self.headers,
                body[0] if len(body) == 1 else b"".join(body),
                self.keep_alive,
            )
            resp.first_byte_at = self.first_at
            mark = self.trailer_mark
            if len(self.headers) > mark:  # trailers of a chunked answer: never merged
                resp.dropped_trailers = len(self.headers) - mark
                resp.headers = self.headers[:mark]
            waiter.set_result(resp)
        self.body = []

    def fail(self, exc: BaseException) -> None:
        self.complete = True
        self.broken = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        stream = self.stream
        if stream is not None:
            self.stream = None
            stream.fail(exc if isinstance(exc, UpstreamError) else UpstreamError(str(exc)))

    def on_timeout(self) -> None:
        self.timer = None
        self.kill()
        self.fail(UpstreamTimeout("upstream timed out", self.pool.upstream))

    def kill(self) -> None:
        """Abort the socket; the connection will never be reused."""
        self.broken = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.transport is not None:
            self.transport.abort()

    @property
    def upstream(self) -> str:
        return self.pool.upstream

    def reusable(self) -> bool:
        return self.alive and self.keep_alive and not self.broken


class CappedConn(Conn):
    """A connection of a pool with ``max_response_body``: keeps at most that many body bytes,
    reads and discards the rest, and measures the full size."""

    __slots__ = ("cap", "size", "truncated")

    def __init__(self, pool: ConnOwner, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(pool, loop)
        self.cap: int = pool.max_response_body or 0
        self.size = 0
        self.truncated = False

    def on_body(self, body: bytes) -> None:
        stream = self.stream
        if stream is not None:
            stream.feed(body)
            return
        if not self.size:
            self.first_at = time.perf_counter()
        before = self.size
        self.size = before + len(body)
        if self.size <= self.cap:
            self.body.append(body)
        elif not self.truncated:
            self.truncated = True
            if before < self.cap:
                self.body.append(body[: self.cap - before])
