"""A small HTTP/1.1 server on ``asyncio.Protocol`` + ``httptools`` (llhttp), for the hot path.

aiohttp's server costs about 70 µs of CPU per request on this class of machine; the same work on a
raw protocol with llhttp costs about 10 µs, and the proxy does little else. This module does only
what a sidecar needs, carefully:

- keep-alive and pipelining (requests on one connection are answered in order, one at a time;
  reading pauses while more than ``MAX_PIPELINE`` requests wait);
- request bodies by Content-Length or chunked; a declared body over ``max_body`` is refused with
  413 *before* it is read, a chunked one as soon as it exceeds it; trailers of a chunked body are
  read and dropped, never merged into the headers;
- ``Expect: 100-continue`` is answered only to HTTP/1.1 clients, only when a body is expected, and
  only once every response owed ahead of that request has been written;
- responses are written with one ``transport.write``; HEAD, 1xx, 204 and 304 carry no body;
- the last answer on a connection (``Connection: close``, HTTP/1.0, an error) is followed by a
  lingering close (half-close, discard input for ``LINGER_S``, as nginx's ``lingering_close``),
  so a client still sending reads its answer instead of a reset; requests pipelined behind a
  ``Connection: close`` request are discarded unprocessed;
- malformed requests get a 400 JSON error and the connection is closed; upgrades are refused.

Bounds (:class:`HttpLimits`; every refusal is reported through ``on_refused(status, reason)``):

- the request line (414 over ``max_request_line``), the head: request line + header lines
  (431 over ``max_header_bytes`` or ``max_headers``). Bytes are counted as they are fed to the
  parser, and a read that would take a head past the limit is fed only up to the limit, so an
  unfinished head never holds more than ``max_header_bytes`` (a head that begins inside the same
  read as the end of the previous pipelined request: at most twice that). A chunked body's
  framing (chunk-size lines, extensions) and trailers count against the same limit.
- HTTP/1.0 and HTTP/1.1 only (505); exactly one Host (400; HTTP/1.0 may omit it); an
  absolute-form target (``GET http://h/p``) becomes origin-form with ``Host: h``.
- timeouts, checked by one sweep per server (no timer per request): ``header_timeout`` from
  accept (or from the first byte of a later request) to the end of the head (408, or a silent
  close when nothing was sent); ``body_timeout`` between two reads of a body (408);
  ``keepalive_timeout`` for an idle keep-alive connection (closed); ``send_timeout`` for a client
  that reads none of its answers (aborted).
- ``max_connections`` per server: a connection beyond it is answered 503 and closed at once.
- write backpressure: while a connection's write buffer is above ``write_buffer_high`` (the
  transport's high-water mark; low-water is half of it) reading from that client stops and no
  further pipelined request is started; both resume below the low-water mark.

Graceful stop: stop accepting, finish in-flight requests, close idle connections (bounded).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import httptools
import orjson

log = logging.getLogger("router.http")

MAX_PIPELINE = 16
LINGER_S = 2.0
_NO_BODY_STATUS = frozenset({204, 304})
_REASONS: dict[int, bytes] = {}


def _reason(status: int) -> bytes:
    r = _REASONS.get(status)
    if r is None:
        from http import HTTPStatus

        try:
            r = HTTPStatus(status).phrase.encode()
        except ValueError:
            r = b"Unknown"
        _REASONS[status] = r
    return r


class _DateCache:
    __slots__ = ("second", "value")

    def __init__(self) -> None:
        self.second = -1
        self.value = b""

    def get(self) -> bytes:
        now = int(time.time())
        if now != self.second:
            self.second = now
            self.value = email.utils.formatdate(now, usegmt=True).encode()
        return self.value


_date = _DateCache()


class Request:
    """One parsed request. ``headers`` maps lower-case names to values (repeats joined ``, ``);
    ``raw_headers`` keeps every header as received, in order."""

    __slots__ = (
        "_query",
        "body",
        "headers",
        "method",
        "peer",
        "raw_headers",
        "raw_path",
        "transport",
        "version",
    )

    def __init__(
        self,
        method: str,
        raw_path: str,
        version: str,
        raw_headers: list[tuple[bytes, bytes]],
        body: bytes,
        peer: str,
        transport: asyncio.BaseTransport | None,
    ) -> None:
        self.method = method
        self.raw_path = raw_path
        self.version = version
        self.raw_headers = raw_headers
        self.body = body
        self.peer = peer
        self.transport = transport
        headers: dict[str, str] = {}
        for k, v in raw_headers:
            name = k.decode("latin-1").lower()
            value = v.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        self.headers = headers
        self._query: dict[str, str] | None = None

    def header(self, name: str) -> str | None:
        """Header value by case-insensitive name."""
        return self.headers.get(name.lower())

    @property
    def path(self) -> str:
        return self.raw_path.split("?", 1)[0]

    @property
    def query(self) -> dict[str, str]:
        if self._query is None:
            qs = self.raw_path.partition("?")[2]
            self._query = dict(parse_qsl(qs, keep_blank_values=True))
        return self._query

    @property
    def host(self) -> str:
        return self.headers.get("host", "")


class Response:
    """A complete response. ``headers`` are raw ``(name, value)`` byte pairs; the server adds
    Content-Length (from the body, unless a HEAD answer carries its own), Date when absent, and
    Connection as needed."""

    __slots__ = ("body", "headers", "reason", "status")

    def __init__(
        self,
        status: int = 200,
        body: bytes = b"",
        headers: list[tuple[bytes, bytes]] | None = None,
        reason: bytes | None = None,
    ) -> None:
        self.status = status
        self.body = body
        self.headers = headers if headers is not None else []
        self.reason = reason

    def header(self, name: str) -> str | None:
        lname = name.lower().encode()
        for k, v in self.headers:
            if k.lower() == lname:
                return v.decode("latin-1")
        return None


def json_response(data: Any, status: int = 200) -> Response:
    return Response(
        status,
        orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS),
        [(b"Content-Type", b"application/json")],
    )


Handler = Callable[[Request], Awaitable[Response]]


def encode_response(resp: Response, head: bool, keep_alive: bool, http10: bool) -> bytes:
    status = resp.status
    parts = [
        b"HTTP/1.1 ", str(status).encode(), b" ", resp.reason or _reason(status), b"\r\n"
    ]  # fmt: skip
    has_date = False
    has_length = False
    for k, v in resp.headers:
        lk = k.lower()
        if lk == b"content-length":
            if not head:
                continue  # recomputed from the body we send
            has_length = True
        elif lk == b"date":
            has_date = True
        elif lk in (b"connection", b"transfer-encoding", b"keep-alive"):
            continue
        parts += (k, b": ", v, b"\r\n")
    if not has_date:
        parts += (b"Date: ", _date.get(), b"\r\n")
    no_body = status in _NO_BODY_STATUS or status < 200
    if not no_body and not has_length:
        parts += (b"Content-Length: ", str(len(resp.body)).encode(), b"\r\n")
    if not keep_alive:
        parts.append(b"Connection: close\r\n")
    elif http10:
        parts.append(b"Connection: keep-alive\r\n")
    parts.append(b"\r\n")
    if not head and not no_body and resp.body:
        parts.append(resp.body)
    return b"".join(parts)


def _error_bytes(status: int, message: str, **extra: Any) -> bytes:
    resp = Response(
        status,
        orjson.dumps({"error": message, **extra}),
        [(b"Content-Type", b"application/json")],
    )
    return encode_response(resp, head=False, keep_alive=False, http10=False)


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """Per-connection and per-server bounds (``limits.*`` of the router config)."""

    max_body: int = 1024 * 1024
    max_request_line: int = 8 * 1024
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    header_timeout: float = 30.0
    body_timeout: float = 60.0
    keepalive_timeout: float = 75.0
    send_timeout: float = 60.0
    max_connections: int = 1024
    write_buffer_high: int = 1024 * 1024


class _Stop(Exception):
    """Raised from a parser callback after a refusal: llhttp stops parsing this read."""


# parser states (HttpProtocol._state)
_AWAIT = 0  # between requests (keep-alive idle, or the rest of a pipelined read)
_HEAD = 1  # reading a request line and headers (a fresh connection starts here)
_BODY = 2  # reading a body
_FRAMING = 3  # inside a chunked body's size line / extensions / trailers

_VERSIONS = frozenset(("1.1", "1.0"))
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def origin_form(target: bytes) -> tuple[bytes, bytes] | None:
    """``(origin-form target, authority)`` of an absolute-form ``http(s)://authority/path?q``
    request target, or None when it is not one (RFC 9112 section 3.2.2)."""
    scheme, sep, rest = target.partition(b"://")
    if not sep or scheme.lower() not in (b"http", b"https"):
        return None
    cut = len(rest)
    for ch in (b"/", b"?", b"#"):
        j = rest.find(ch)
        if j != -1 and j < cut:
            cut = j
    authority, path = rest[:cut], rest[cut:].partition(b"#")[0]
    if not authority or b"@" in authority:
        return None
    if not path.startswith(b"/"):
        path = b"/" + path
    return path, authority


class HttpProtocol(asyncio.Protocol):
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

    def __init__(self, server: HttpServer) -> None:
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
        self.last_active = self._head_since = time.monotonic()

    # ---- connection ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop: not a subclass
        server = self.server
        if len(server.connections) >= server.limits.max_connections:
            # over the per-worker cap: answer at once and give the descriptor back
            self._refused = True
            server.on_refused(503, "too_many_connections")
            transport.write(_error_bytes(503, "too many connections"))  # type: ignore[attr-defined]
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

    def pause_writing(self) -> None:
        """The client does not read as fast as we answer: stop reading and dispatching."""
        self._write_paused = True
        self._write_paused_since = time.monotonic()
        self.server.on_event("write_paused")
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self.last_active = self._head_since = time.monotonic()
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
        data = _error_bytes(status, message, **extra)
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


class HttpServer:
    """Serve ``handler`` on a listening socket inside the running event loop."""

    def __init__(
        self,
        handler: Handler,
        *,
        max_body: int | None = None,
        limits: HttpLimits | None = None,
        on_refused: Callable[[int, str], None] | None = None,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        if limits is None:
            limits = HttpLimits() if max_body is None else HttpLimits(max_body=max_body)
        elif max_body is not None:
            raise TypeError("give max_body inside limits")
        self.handler = handler
        self.limits = limits
        self.max_body = limits.max_body
        self.connections: set[HttpProtocol] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.stopping = False
        self.listener: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._on_refused = on_refused
        self._on_event = on_event

    def on_refused(self, status: int, reason: str) -> None:
        if self._on_refused is not None:
            self._on_refused(status, reason)

    def on_event(self, name: str) -> None:
        if self._on_event is not None:
            self._on_event(name)

    @property
    def sweep_interval(self) -> float:
        """How often timeouts are checked: a quarter of the shortest one, within [0.01, 1] s."""
        lim = self.limits
        shortest = min(lim.header_timeout, lim.body_timeout, lim.keepalive_timeout,
                       lim.send_timeout)  # fmt: skip
        return max(0.01, min(1.0, shortest / 4))

    async def start(self, sock: socket.socket, backlog: int = 2048) -> None:
        loop = asyncio.get_running_loop()
        self.listener = await loop.create_server(
            lambda: HttpProtocol(self), sock=sock, backlog=backlog
        )
        self._sweeper = loop.create_task(self._sweep())

    async def _sweep(self) -> None:
        interval = self.sweep_interval
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for conn in list(self.connections):
                conn.check_timeouts(now)

    async def stop(self, timeout: float) -> None:
        """Stop accepting; let in-flight requests finish (bounded); close every connection."""
        self.stopping = True
        if self.listener is not None:
            self.listener.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conn in list(self.connections):
            if conn.idle:
                conn.close()
        deadline = time.monotonic() + timeout
        while self.tasks and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self.tasks:
            log.warning(
                "%d requests still running at the end of the drain timeout", len(self.tasks)
            )
        for conn in list(self.connections):
            conn.close()
        if self.listener is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.listener.wait_closed(), 1.0)
