"""A small HTTP/1.1 server on ``asyncio.Protocol`` + ``httptools`` (llhttp), for the hot path.

aiohttp's server costs about 70 µs of CPU per request on this class of machine; the same work on a
raw protocol with llhttp costs about 10 µs, and the proxy does little else. This module does only
what a sidecar needs, carefully:

- keep-alive and pipelining (requests on one connection are answered in order, one at a time;
  reading pauses while more than ``MAX_PIPELINE`` requests wait);
- request bodies by Content-Length or chunked; ``Expect: 100-continue``; a declared body over
  ``max_body`` is refused with 413 *before* it is read, a chunked one as soon as it exceeds it;
- responses are written with one ``transport.write``; HEAD, 1xx, 204 and 304 carry no body;
- malformed requests get a 400 JSON error and the connection is closed; upgrades are refused;
- idle keep-alive connections are closed after ``idle_timeout`` (swept every few seconds);
- graceful stop: stop accepting, finish in-flight requests, close idle connections (bounded).
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


class HttpProtocol(asyncio.Protocol):
    __slots__ = (
        "_body",
        "_body_size",
        "_busy",
        "_closing",
        "_headers",
        "_pending",
        "_reading_paused",
        "_refused",
        "_url",
        "last_active",
        "parser",
        "peer",
        "server",
        "transport",
    )

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.peer = ""
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._body_size = 0
        self._refused = False
        self._pending: deque[tuple[Request, bool, bool]] = deque()
        self._busy = False
        self._closing = False
        self._reading_paused = False
        self.last_active = time.monotonic()

    # ---- connection ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop: not a subclass
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else "unix"
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.transport = None
        self._pending.clear()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        self.last_active = time.monotonic()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if not self._refused:
                self._refuse(400, "protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            if not self._refused:
                self._refuse(400, "malformed HTTP request", detail=str(exc)[:200])

    def _refuse(self, status: int, message: str, **extra: Any) -> None:
        """Answer with an error after any responses still owed, then close."""
        self._refused = True
        if self.transport is None:
            return
        self.server.on_refused(status)
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

    # ---- llhttp callbacks -------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._body = []
        self._body_size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        limit = self.server.max_body
        length = None
        expect = False
        for k, v in self._headers:
            lk = k.lower()
            if lk == b"content-length":
                with contextlib.suppress(ValueError):
                    length = int(v)
            elif lk == b"expect" and v.lower() == b"100-continue":
                expect = True
        if length is not None and length > limit:
            self._refuse(413, "request body too large", limit_bytes=limit)
            return
        if expect and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self.server.max_body:
            if not self._refused:
                self._refuse(413, "request body too large", limit_bytes=self.server.max_body)
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        p = self.parser
        if p.should_upgrade():
            self._refuse(400, "protocol upgrades are not supported")
            return
        method = p.get_method().decode()
        body = b"".join(self._body) if self._body else b""
        req = Request(
            method, self._url.decode("latin-1"), p.get_http_version(), self._headers, body,
            self.peer, self.transport,
        )  # fmt: skip
        keep_alive = p.should_keep_alive() and not self.server.stopping
        self._pending.append((req, keep_alive, req.version == "1.0"))
        if len(self._pending) > MAX_PIPELINE and self.transport is not None:
            self.transport.pause_reading()
            self._reading_paused = True
        if not self._busy:
            self._next()

    # ---- dispatch ---------------------------------------------------------------------------
    def _next(self) -> None:
        while self._pending:
            req, keep_alive, http10 = self._pending.popleft()
            if isinstance(req, _RefusalMarker):
                self._send_and_linger(req.data)
                return
            self._busy = True
            task = asyncio.get_running_loop().create_task(self._run(req, keep_alive, http10))
            self.server.tasks.add(task)
            task.add_done_callback(self.server.tasks.discard)
            return
        self._busy = False
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()

    async def _run(self, req: Request, keep_alive: bool, http10: bool) -> None:
        try:
            resp = await self.server.handler(req)
        except Exception:
            log.exception("unhandled error in request handler")
            resp = json_response({"error": "internal server error"}, 500)
        keep_alive = keep_alive and not self.server.stopping
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(encode_response(resp, req.method == "HEAD", keep_alive, http10))
            if not keep_alive:
                transport.close()
        self.last_active = time.monotonic()
        self._next()

    @property
    def idle(self) -> bool:
        return not self._busy and not self._pending

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
        max_body: int,
        idle_timeout: float = 75.0,
        on_refused: Callable[[int], None] | None = None,
    ) -> None:
        self.handler = handler
        self.max_body = max_body
        self.idle_timeout = idle_timeout
        self.connections: set[HttpProtocol] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.stopping = False
        self.listener: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._on_refused = on_refused

    def on_refused(self, status: int) -> None:
        if self._on_refused is not None:
            self._on_refused(status)

    async def start(self, sock: socket.socket, backlog: int = 2048) -> None:
        loop = asyncio.get_running_loop()
        self.listener = await loop.create_server(
            lambda: HttpProtocol(self), sock=sock, backlog=backlog
        )
        self._sweeper = loop.create_task(self._sweep())

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(min(5.0, self.idle_timeout))
            cutoff = time.monotonic() - self.idle_timeout
            for conn in list(self.connections):
                if conn.idle and conn.last_active < cutoff:
                    conn.close()

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
