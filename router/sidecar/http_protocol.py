"""One client connection of the sidecar's HTTP server: llhttp parsing, pipelining, refusals.

Per connection (an ``asyncio.Protocol`` fed by the event loop, parsed by ``httptools``):

- keep-alive and pipelining (requests on one connection are answered in order, one at a time;
  reading pauses while more than ``MAX_PIPELINE`` requests wait);
- request bodies by Content-Length or chunked; a declared body over ``max_body`` is refused with
  413 *before* it is read, a chunked one as soon as it exceeds it; trailers of a chunked body are
  read and dropped, never merged into the headers;
- ``Expect: 100-continue`` is answered only to HTTP/1.1 clients, only when a body is expected, and
  only once every response owed ahead of that request has been written;
- responses are written with one ``transport.write``; a streamed response (``Response.stream``)
  is written as its bytes arrive, chunked to HTTP/1.1 clients (unless the upstream gave a
  Content-Length), close-delimited to HTTP/1.0 ones. While the client's write buffer is above
  ``write_buffer_high`` the stream is paused (its upstream is not read); a client that goes away
  aborts the stream; a stream that fails mid-body closes the connection without the final
  chunk, so the client sees a truncated answer, never a complete-looking one;
- the last answer on a connection (``Connection: close``, HTTP/1.0, an error) is followed by a
  lingering close (half-close, discard input for ``LINGER_S``, as nginx's ``lingering_close``),
  so a client still sending reads its answer instead of a reset; requests pipelined behind a
  ``Connection: close`` request are discarded unprocessed;
- malformed requests get a 400 JSON error and the connection is closed; upgrades are refused;
- HTTP/1.0 and HTTP/1.1 only (505); exactly one Host (400; HTTP/1.0 may omit it); an
  absolute-form target (``GET http://h/p``) becomes origin-form with ``Host: h``;
- the bounds of :class:`~router.sidecar.http_limits.HttpLimits` (head and body sizes, timeouts
  via :meth:`HttpProtocol.check_timeouts`, write backpressure), each refusal reported to the
  owner's ``on_refused``.

The owner (:class:`~router.sidecar.httpserver.HttpServer`) is seen only through
:class:`ConnectionOwner`, so this module does not import the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Protocol

import httptools

from router.sidecar.http_limits import HttpLimits
from router.sidecar.http_messages import (
    Handler,
    Request,
    encode_response,
    error_bytes,
    json_response,
    origin_form,
)
from router.sidecar.http_relay import StreamRelay

if TYPE_CHECKING:
    from router.sidecar.upstream_stream import BodyStream

log = logging.getLogger("router.http")

MAX_PIPELINE = 16
LINGER_S = 2.0


class ConnectionOwner(Protocol):
    """What a connection needs of its server: the handler, the bounds, the bookkeeping."""

    handler: Handler
    limits: HttpLimits
    connections: set[HttpProtocol]
    tasks: set[asyncio.Task[None]]
    stopping: bool

    def on_refused(self, status: int, reason: str) -> None: ...

    def on_event(self, name: str) -> None: ...


class _Stop(Exception):
    """Raised from a parser callback after a refusal: llhttp stops parsing this read."""


# parser states (HttpProtocol._state)
_AWAIT = 0  # between requests (keep-alive idle, or the rest of a pipelined read)
_HEAD = 1  # reading a request line and headers (a fresh connection starts here)
_BODY = 2  # reading a body
_FRAMING = 3  # inside a chunked body's size line / extensions / trailers

_VERSIONS = frozenset(("1.1", "1.0"))
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class HttpProtocol(StreamRelay, asyncio.Protocol):
    __slots__ = (
        "_body",
        "_body_mark",
        "_body_size",
        "_busy",
        "_continue_owed",
        "_head_raw",
        "_head_since",
        "_headers",
        "_max_head",
        "_max_headers",
        "_max_url",
        "_pending",
        "_reading_paused",
        "_refused",
        "_req",
        "_state",
        "_trailers",
        "_url",
        "_version",
        "_write_paused",
        "_write_paused_since",
        "last_active",
        "parser",
        "peer",
        "server",
        "transport",
    )

    def __init__(self, server: ConnectionOwner) -> None:
        self.server = server
        limits = server.limits
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.peer = ""
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._trailers: list[tuple[bytes, bytes]] = []  # receives trailers; emptied, never used
        self._body: list[bytes] = []
        self._body_size = 0
        self._body_mark = 0  # _body_size when the current framing section began
        self._head_raw = 0  # bytes fed since the current head (or framing section) began
        self._max_head = limits.max_header_bytes
        self._max_headers = limits.max_headers
        # the shortest request line around a target: "GET " + target + " HTTP/1.1"
        self._max_url = limits.max_request_line - 13
        self._state = _HEAD
        self._version = "1.1"
        self._req: Request | None = None
        self._refused = False
        self._continue_owed = False
        self._pending: deque[tuple[Request, bool, bool]] = deque()
        self._busy = False
        self._reading_paused = False
        self._write_paused = False
        self._write_paused_since = 0.0
        self._stream: BodyStream | None = None
        self._chunked = False
        self.last_active = self._head_since = time.monotonic()

    # ---- connection ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop: not a subclass
        server = self.server
        if len(server.connections) >= server.limits.max_connections:
            # over the per-worker cap: answer at once and give the descriptor back
            self._refused = True
            server.on_refused(503, "too_many_connections")
            transport.write(error_bytes(503, "too many connections"))  # type: ignore[attr-defined]
            transport.close()
            return
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else "unix"
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        high = server.limits.write_buffer_high
        transport.set_write_buffer_limits(high, high // 2)  # type: ignore[attr-defined]
        server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.transport = None
        self._pending.clear()
        stream = self._stream
        if stream is not None:
            self._stream = None
            stream.abort("client_aborted")

    def pause_writing(self) -> None:
        """The client does not read as fast as we answer: stop reading and dispatching."""
        self._write_paused = True
        self._write_paused_since = time.monotonic()
        self.server.on_event("write_paused")
        if self._stream is not None:
            self._stream.pause()
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self.last_active = self._head_since = time.monotonic()
        if self._stream is not None:
            self._stream.resume()
        if not self._busy:
            self._next()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering after a refusal: input is discarded
        self.last_active = time.monotonic()
        if self._state != _BODY:
            n = self._head_raw + len(data)
            if n > self._max_head:
                self._feed_bounded(data)
                return
            self._head_raw = n
        elif len(data) > self._max_head:
            self._feed_bounded(data)
            return
        try:  # (_feed, inlined: this is the per-request path)
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._parse_error(exc)

    def _feed(self, data: bytes | memoryview) -> None:
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._parse_error(exc)

    def _parse_error(self, exc: Exception) -> None:
        if self._refused:
            return  # a callback refused the request and stopped the parser
        if isinstance(exc, httptools.HttpParserUpgrade):
            self._refuse(400, "protocol upgrades are not supported", "upgrade")
            return
        detail = str(exc)[:200]
        if detail == "Invalid HTTP version":
            self._refuse(505, "HTTP version not supported", "bad_version")
        else:
            self._refuse(400, "malformed HTTP request", "malformed_request", detail=detail)

    def _feed_bounded(self, data: bytes) -> None:
        """Slow path: this read could take a head (or a chunked body's framing) past
        ``max_header_bytes``. Feed it in pieces that fit, and refuse once nothing fits."""
        view = memoryview(data)
        pos, end = 0, len(data)
        while pos < end and not self._refused:
            if self._state != _BODY:
                used = self._head_raw
                if self._state == _FRAMING:  # the chunk's data bytes are not framing
                    used -= self._body_size - self._body_mark
                room = self._max_head - used
                if room <= 0:
                    if self._state == _FRAMING:
                        self._refuse(431, "chunked framing or trailers too large",
                                     "header_too_large", limit_bytes=self._max_head)  # fmt: skip
                    else:
                        self._refuse(431, "request header fields too large",
                                     "header_too_large", limit_bytes=self._max_head)  # fmt: skip
                    return
                piece = view[pos : pos + room]
                self._head_raw += len(piece)
            else:
                piece = view[pos : pos + self._max_head]
            pos += len(piece)
            self._feed(piece)

    def _refuse(self, status: int, message: str, reason: str, **extra: Any) -> None:
        """Answer with an error after any responses still owed, then close."""
        self._refused = True
        if self.transport is None:
            return
        self.server.on_refused(status, reason)
        data = error_bytes(status, message, **extra)
        if self._busy or self._pending:
            # keep pipelining order: queue a synthetic response after the owed ones
            self._pending.append((_RefusalMarker(data), False, False))  # type: ignore[arg-type]
        else:
            self._send_and_linger(data)

    def _send_and_linger(self, data: bytes) -> None:
        """Write a final answer, half-close, and discard input for a moment before closing, so
        a client still sending its body reads the answer instead of a connection reset."""
        t = self.transport
        if t is None:
            return
        t.write(data)
        if t.can_write_eof():
            t.write_eof()
            asyncio.get_running_loop().call_later(LINGER_S, t.close)
        else:
            t.close()
        if self._reading_paused:  # (discarding needs reading)
            self._reading_paused = False
            t.resume_reading()

    # ---- timeouts (called by the server's sweep) ---------------------------------------------
    def check_timeouts(self, now: float) -> None:
        t = self.transport
        if t is None or self._refused:
            return
        limits = self.server.limits
        if self._write_paused:
            if now - self._write_paused_since > limits.send_timeout:
                self.server.on_event("send_timeout")
                self._refused = True
                t.abort()
            return
        if self._reading_paused:
            return  # we stopped reading (pipelining bound); the client is not late
        state = self._state
        if state == _HEAD:
            if now - self._head_since > limits.header_timeout:
                if self._head_raw:
                    self._refuse(408, "request header timeout", "header_timeout")
                else:  # nothing sent at all: close without an answer (as nginx does)
                    self.server.on_event("header_timeout_idle")
                    self._refused = True
                    t.close()
        elif state == _AWAIT:
            idle = not self._busy and not self._pending
            if idle and now - self.last_active > limits.keepalive_timeout:
                self.server.on_event("keepalive_timeout")
                self._refused = True
                t.close()
        elif now - self.last_active > limits.body_timeout:
            self._refuse(408, "request body timeout", "body_timeout")

    # ---- llhttp callbacks -------------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self._state == _AWAIT:
            self._head_since = self.last_active
            self._state = _HEAD
        self._url = b""
        self._headers = []
        self._body = []
        self._body_size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._max_url:
            line = len(self.parser.get_method()) + 1 + len(self._url) + 9
            if line > self.server.limits.max_request_line:
                self._refuse(414, "request line too long", "request_line_too_long",
                             limit_bytes=self.server.limits.max_request_line)  # fmt: skip
                raise _Stop

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self._headers
        headers.append((name, value))
        if len(headers) > self._max_headers:
            if self._state == _HEAD:
                self._refuse(431, "too many header fields", "too_many_headers",
                             limit=self._max_headers)  # fmt: skip
            else:
                self._refuse(431, "too many trailer fields", "too_many_headers",
                             limit=self._max_headers)  # fmt: skip
            raise _Stop

    def on_headers_complete(self) -> None:
        self._state = _BODY
        headers = self._headers
        self._headers = self._trailers  # anything after this point is a trailer: dropped
        p = self.parser
        version = p.get_http_version()
        if version not in _VERSIONS:
            self._refuse(505, "HTTP version not supported", "bad_version", version=version)
            raise _Stop
        length = None
        expect = chunked = False
        hosts = 0
        for k, v in headers:
            n = len(k)
            if n == 4:
                if k.lower() == b"host":
                    hosts += 1
            elif n == 14:
                if k.lower() == b"content-length":
                    with contextlib.suppress(ValueError):
                        length = int(v)
            elif n == 6:
                if k.lower() == b"expect" and v.lower() == b"100-continue":
                    expect = True
            elif n == 17 and k.lower() == b"transfer-encoding":
                chunked = True
        if hosts != 1 and (hosts or version == "1.1"):
            self._refuse(400, "exactly one Host header is required" if hosts else
                         "missing Host header", "bad_host")  # fmt: skip
            raise _Stop
        limit = self.server.limits.max_body
        if length is not None and length > limit:
            self._refuse(413, "request body too large", "body_too_large", limit_bytes=limit)
            raise _Stop
        url = self._url
        if not url.startswith(b"/"):
            url, headers = self._normalise_target(url, headers)
        self._req = Request(
            p.get_method().decode(), url.decode("latin-1"), version, headers, b"", self.peer,
            self.transport,
        )  # fmt: skip
        if expect and version == "1.1" and (chunked or length):
            if self._busy or self._pending:
                self._continue_owed = True  # sent when the answers ahead have been written
            elif self.transport is not None:
                self.transport.write(_CONTINUE)

    def _normalise_target(
        self, url: bytes, headers: list[tuple[bytes, bytes]]
    ) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        """Absolute-form becomes origin-form with the matching Host; ``*`` (OPTIONS) stays."""
        if url == b"*":
            return url, headers
        parts = origin_form(url)
        if parts is None:
            self._refuse(400, "invalid request target", "bad_target")
            raise _Stop
        path, authority = parts
        out = [(k, v) for k, v in headers if k.lower() != b"host"]
        out.append((b"Host", authority))
        return path, out

    def on_chunk_header(self) -> None:
        self._state = _FRAMING
        self._head_raw = 0
        self._body_mark = self._body_size

    def on_chunk_complete(self) -> None:
        self._state = _BODY

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self.server.limits.max_body:
            if not self._refused:
                limit = self.server.limits.max_body
                self._refuse(413, "request body too large", "body_too_large", limit_bytes=limit)
            raise _Stop
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._state = _AWAIT
        self._head_raw = 0
        if self._trailers:
            self._trailers.clear()
            self.server.on_event("request_trailers_dropped")
        if self._refused:
            return
        self._continue_owed = False
        p = self.parser
        if p.should_upgrade():
            self._refuse(400, "protocol upgrades are not supported", "upgrade")
            return
        req = self._req
        if req is None:
            return
        self._req = None
        if self._body:
            req.body = b"".join(self._body)
        keep_alive = p.should_keep_alive() and not self.server.stopping
        self._pending.append((req, keep_alive, req.version == "1.0"))
        if not keep_alive:
            # the last request on this connection: anything after it is discarded unread (a
            # pipelined request behind "Connection: close" must never reach the upstream)
            self._refused = True
            if not self._busy:
                self._next()
            raise _Stop
        t = self.transport
        if len(self._pending) > MAX_PIPELINE and not self._reading_paused and t is not None:
            self._reading_paused = True
            t.pause_reading()
        if not self._busy:
            self._next()

    # ---- dispatch ---------------------------------------------------------------------------
    def _next(self) -> None:
        if self._write_paused:
            self._busy = False
            return  # resume_writing calls us again
        while self._pending:
            req, keep_alive, http10 = self._pending.popleft()
            if isinstance(req, _RefusalMarker):
                self._busy = False
                self._send_and_linger(req.data)
                return
            self._busy = True
            task = asyncio.get_running_loop().create_task(self._run(req, keep_alive, http10))
            self.server.tasks.add(task)
            task.add_done_callback(self.server.tasks.discard)
            return
        self._busy = False
        t = self.transport
        if t is None:
            return
        if self._continue_owed:
            self._continue_owed = False
            t.write(_CONTINUE)
        if self._reading_paused and not self._refused:
            self._reading_paused = False
            self.last_active = self._head_since = time.monotonic()
            t.resume_reading()

    async def _run(self, req: Request, keep_alive: bool, http10: bool) -> None:
        try:
            resp = await self.server.handler(req)
        except Exception:
            log.exception("unhandled error in request handler")
            resp = json_response({"error": "internal server error"}, 500)
        keep_alive = keep_alive and not self.server.stopping
        if resp.stream is not None:
            await self._relay(resp, resp.stream, req.method == "HEAD", keep_alive, http10)
            return
        transport = self.transport
        if transport is not None and not transport.is_closing():
            data = encode_response(resp, req.method == "HEAD", keep_alive, http10)
            if keep_alive:
                transport.write(data)
            else:
                self._refused = True  # discard whatever else the client sends
                self._pending.clear()
                self._send_and_linger(data)
                return
        self.last_active = time.monotonic()
        self._next()

    def _after_relay(self, ok: bool, keep_alive: bool) -> None:
        """A streamed answer ended (:meth:`StreamRelay._relay`): go on with the connection, or
        close it. An incomplete answer is closed without the final chunk (as nginx does), so
        the client sees a truncated answer and not a complete-looking one."""
        transport = self.transport
        if transport is None:
            return
        if not ok:
            self._refused = True
            self._pending.clear()
            transport.close()
            return
        if not keep_alive:
            self._refused = True
            self._pending.clear()
            self._send_and_linger(b"")
            return
        self.last_active = time.monotonic()
        self._next()

    @property
    def idle(self) -> bool:
        return not self._busy and not self._pending

    @property
    def head_bytes(self) -> int:
        """Bytes of the current unfinished head (or chunk framing) fed to the parser so far."""
        return self._head_raw

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class _RefusalMarker:
    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data
