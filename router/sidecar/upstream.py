"""Keep-alive HTTP/1.1 client pool to one upstream, on ``asyncio.Protocol`` + httptools (llhttp).

This is the hottest code in the router: every proxied and every shadow request goes through
:meth:`UpstreamPool.request`. ``aiohttp.ClientSession`` costs ~170-210 µs of CPU per call; this
client does one ``transport.write`` of a pre-joined buffer, parses the answer with a reused
per-connection ``httptools.HttpResponseParser`` and allocates per request only what it must
(the request buffer, one future, one deadline-queue entry, the response).

Semantics
---------
* At most ``pool_size`` connections exist (connecting + busy + idle). Idle connections are
  reused LIFO (the most recently used socket is the least likely to have been closed by the
  server's idle timeout). When all slots are taken, callers wait FIFO, within their timeout; a
  released connection (or a freed slot) is handed directly to the oldest waiter.
* ``timeout`` covers the whole exchange: waiting for a slot, connecting, writing and reading the
  full response. ``connect_timeout`` additionally bounds the TCP connect.
* Responses are framed by Content-Length, chunked transfer-encoding or read-until-close. HEAD
  answers and 1xx/204/304 have no body. Interim 1xx answers (100 Continue, 103 Early Hints) are
  skipped; the final answer is returned.
* A connection is reused only if the exchange completed cleanly and llhttp says keep-alive
  (no ``Connection: close``, not HTTP/1.0 without keep-alive, not read-until-close). Anything
  else (timeouts, cancellation, parse errors, unsolicited bytes) closes it, so a connection with a
  half-read response never returns to the pool.
* Retry (the rule nginx applies with ``proxy_next_upstream``, whose default never passes a
  non-idempotent request on once it has been sent): a request is retried once, on a fresh
  connection, when the connection was lost before ANY response byte arrived and either

  - the request cannot have reached the upstream: the connection was already closing when it was
    picked, or the write itself failed (any method); or
  - the connection was a *reused* keep-alive one (the race with a server closing an idle
    connection at the moment we write to it) and the method is idempotent (RFC 9110 section
    9.2.2: GET, HEAD, OPTIONS, TRACE, PUT, DELETE).

  A non-idempotent request (POST, PATCH, ...) lost that way after it was written may have been
  read by the upstream, so it is not sent again: :class:`UpstreamNotRetriedError` (a 502 for the
  client, counted as ``kind="not_retried"``). A *fresh* connection lost after the write is not
  retried either: that is a real upstream failure.
* Trailers of a chunked answer are read and dropped (``UpstreamResponse.dropped_trailers``
  counts them); they never become headers.
* An unsolicited ``101 Switching Protocols`` (we never ask for an upgrade) fails the exchange.
* ``max_response_body`` (the shadow pools): at most that many body bytes are kept; the rest is
  read and discarded, the answer is marked ``truncated`` and ``body_bytes`` has its full size.
* The request's own ``Content-Length`` / ``Transfer-Encoding`` headers are replaced: the body
  is always sent whole with a Content-Length computed here (omitted for GET/HEAD with an empty
  body). All other headers are sent as given, in order (the caller sets Host).
* Cancelling the awaiting task aborts that connection and frees its pool slot.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
from dataclasses import dataclass

import httptools

__all__ = [
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamNotRetriedError",
    "UpstreamPool",
    "UpstreamProtocolError",
    "UpstreamResponse",
    "UpstreamTimeout",
]


class UpstreamError(Exception):
    """Any failure talking to the upstream; ``upstream`` is ``"host:port"``."""

    upstream: str

    def __init__(self, message: str, upstream: str = "") -> None:
        super().__init__(f"{message} ({upstream})" if upstream else message)
        self.upstream = upstream


class UpstreamConnectError(UpstreamError):
    """Connection refused, name resolution failed or the connect timed out."""


class UpstreamTimeout(UpstreamError):
    """The exchange (slot wait + connect + write + full read) exceeded its timeout."""


class UpstreamProtocolError(UpstreamError):
    """Malformed response, or the connection was lost before the response was complete."""


class UpstreamNotRetriedError(UpstreamProtocolError):
    """A non-idempotent request was lost on a reused connection after it was written: the
    upstream may have read it, so it is not sent again."""


@dataclass(slots=True)
class UpstreamResponse:
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    keep_alive: bool
    dropped_trailers: int = 0
    truncated: bool = False  # only with max_response_body: body holds the first bytes
    body_bytes: int = -1  # only with max_response_body: the full body size


class _Lost(Exception):
    """Internal: the connection went away before any response byte (maybe retryable).
    ``sent`` is False when the request provably never left (closing connection, failed write)."""

    def __init__(self, sent: bool) -> None:
        super().__init__()
        self.sent = sent


IDEMPOTENT_METHODS = frozenset((b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"))


_NO_CL_METHODS = frozenset((b"GET", b"HEAD"))
_CONTENT_LENGTH = b"content-length"
_TRANSFER_ENCODING = b"transfer-encoding"


def _build_request(
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


class _Conn(asyncio.Protocol):
    """One upstream connection; at most one exchange in flight."""

    __slots__ = (
        "alive",
        "body",
        "broken",
        "complete",
        "framed",
        "got_bytes",
        "head",
        "headers",
        "headers_done",
        "interim",
        "keep_alive",
        "leased",
        "loop",
        "parser",
        "pool",
        "reason",
        "reset_parser",
        "reused",
        "timer",
        "trailer_mark",
        "transport",
        "unsent",
        "waiter",
    )

    def __init__(self, pool: UpstreamPool, loop: asyncio.AbstractEventLoop) -> None:
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

    # ---- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance check here
        self.transport = transport  # type: ignore[assignment]
        self.alive = True
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.pool._conns.add(self)

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        if self.complete:
            # bytes while no exchange is in flight: the stream is out of sync
            self._kill()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # 101 Switching Protocols (never asked for): the answer is complete, the
            # connection is no longer HTTP
            self._kill()
            self._fail(UpstreamProtocolError("unexpected protocol upgrade", self.pool._name))
            return
        except httptools.HttpParserError as exc:
            self._kill()
            self._fail(UpstreamProtocolError(f"malformed response: {exc!r}", self.pool._name))
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
        if not self.complete and waiter is not None and not waiter.done():
            name = self.pool._name
            if self.headers_done and not self.framed and not self.head:
                self.keep_alive = False  # read-until-close body: EOF ends it
                self._finish()
            elif not self.got_bytes:
                self._fail(_Lost(not self.unsent))
            elif self.headers_done:
                self._fail(UpstreamProtocolError("connection lost mid-body", name))
            else:
                self._fail(UpstreamProtocolError("connection lost mid-headers", name))
        self.complete = True
        self.pool._conn_lost(self)

    # ---- httptools callbacks ---------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.complete:
            # a second response to a single request: never reuse this connection
            self.broken = True
            raise UpstreamProtocolError("unsolicited response bytes", self.pool._name)

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))
        n = len(name)
        if n == 14:
            if name.lower() == _CONTENT_LENGTH:
                self.framed = True
        elif n == 17 and name.lower() == _TRANSFER_ENCODING and b"chunked" in value.lower():
            self.framed = True

    def on_headers_complete(self) -> None:
        parser = self.parser
        status = parser.get_status_code()
        if status < 200:
            if status == 101:
                self._kill()
                self._fail(UpstreamProtocolError("unsolicited 101 Switching Protocols",
                                                 self.pool._name))  # fmt: skip
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

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            self.framed = False
            self.reason = b""
            self.headers = []
            return
        if not self.complete:
            self._finish()

    # ---- exchange --------------------------------------------------------------------------
    def start(self, data: bytes, head: bool, deadline: float) -> asyncio.Future[UpstreamResponse]:
        loop = self.loop
        self.waiter = waiter = loop.create_future()
        if not self.alive or self.broken:
            self._kill()
            waiter.set_exception(_Lost(False))
            return waiter
        self.complete = False
        self.head = head
        self.got_bytes = False
        self.headers_done = False
        self.framed = False
        self.reason = b""
        self.headers = []
        self.body = []
        self.pool._watch(deadline, self, waiter)
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
            mark = self.trailer_mark
            if len(self.headers) > mark:  # trailers of a chunked answer: never merged
                resp.dropped_trailers = len(self.headers) - mark
                resp.headers = self.headers[:mark]
            waiter.set_result(resp)
        self.body = []

    def _fail(self, exc: BaseException) -> None:
        self.complete = True
        self.broken = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def _on_timeout(self) -> None:
        self.timer = None
        self._kill()
        self._fail(UpstreamTimeout("upstream timed out", self.pool._name))

    def _kill(self) -> None:
        """Abort the socket; the connection will never be reused."""
        self.broken = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.transport is not None:
            self.transport.abort()

    def reusable(self) -> bool:
        return self.alive and self.keep_alive and not self.broken


class _CappedConn(_Conn):
    """A connection of a pool with ``max_response_body``: keeps at most that many body bytes,
    reads and discards the rest, and measures the full size."""

    __slots__ = ("cap", "size", "truncated")

    def __init__(self, pool: UpstreamPool, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(pool, loop)
        self.cap: int = pool._max_body or 0
        self.size = 0
        self.truncated = False

    def on_body(self, body: bytes) -> None:
        before = self.size
        self.size = before + len(body)
        if self.size <= self.cap:
            self.body.append(body)
        elif not self.truncated:
            self.truncated = True
            if before < self.cap:
                self.body.append(body[: self.cap - before])


class UpstreamPool:
    """Keep-alive HTTP/1.1 connection pool to one upstream ``host:port``."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        pool_size: int = 64,
        connect_timeout: float = 1.0,
        timeout: float = 5.0,
        max_response_body: int | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if pool_size < 1:
            raise ValueError("pool_size must be >= 1")
        self._max_body = max_response_body
        self._conn_class: type[_Conn] = _Conn if max_response_body is None else _CappedConn
        self._host = host
        self._port = port
        self._name = f"{host}:{port}"
        self._size = pool_size
        self._connect_timeout = connect_timeout
        self._timeout = timeout
        self._loop = loop
        self._open = 0  # slots taken: connecting + busy + idle
        self._idle: list[_Conn] = []  # LIFO
        self._waiters: collections.deque[asyncio.Future[_Conn | None]] = collections.deque()
        self._conns: set[_Conn] = set()  # every connected socket (for close())
        self._closed = False
        self._all_lost: asyncio.Future[None] | None = None
        # exchange deadlines in start order; one timer for the earliest (see _watch)
        self._deadlines: collections.deque[
            tuple[float, _Conn, asyncio.Future[UpstreamResponse]]
        ] = collections.deque()
        self._sweeper: asyncio.TimerHandle | None = None
        self._sweep_at = 0.0  # when _sweeper fires

    @property
    def upstream(self) -> str:
        return self._name

    @property
    def in_use(self) -> int:
        """Connections busy with an exchange (or being opened for one)."""
        return self._open - len(self._idle)

    @property
    def idle(self) -> int:
        """Open keep-alive connections waiting for a request."""
        return len(self._idle)

    async def request(
        self,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes = b"",
        timeout: float | None = None,
    ) -> UpstreamResponse:
        """One exchange; raises an :class:`UpstreamError` subclass on failure."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        if self._closed:
            raise UpstreamError("pool is closed", self._name)
        deadline = loop.time() + (self._timeout if timeout is None else timeout)
        data = _build_request(method, target, headers, body)
        head = method == b"HEAD"
        idle = self._idle
        if idle:
            conn = idle.pop()
            conn.leased = True
        else:
            conn = await self._acquire(loop, deadline)
        retry = True
        while True:
            waiter = conn.start(data, head, deadline)
            try:
                resp = await waiter
            except _Lost as lost:
                # the connection is gone; we still hold its slot
                if (
                    retry
                    and not self._closed
                    and (not lost.sent or (conn.reused and method in IDEMPOTENT_METHODS))
                ):
                    retry = False
                    conn = await self._connect(loop, deadline)
                    continue
                self._release_slot()
                if lost.sent and conn.reused and method not in IDEMPOTENT_METHODS:
                    raise UpstreamNotRetriedError(
                        f"connection closed before any response byte after the {method.decode()} "
                        "was sent; not retried (not idempotent)",
                        self._name,
                    ) from None
                raise UpstreamProtocolError(
                    "connection closed before any response byte", self._name
                ) from None
            except BaseException:
                conn._kill()
                self._release_slot()
                raise
            break
        deadlines = self._deadlines
        while deadlines and deadlines[0][2].done():
            deadlines.popleft()
        if self._max_body is not None:  # a _CappedConn: hand over its count, reset it
            resp.truncated = conn.truncated  # type: ignore[attr-defined]
            resp.body_bytes = conn.size  # type: ignore[attr-defined]
            conn.truncated = False  # type: ignore[attr-defined]
            conn.size = 0  # type: ignore[attr-defined]
        if conn.reusable() and not self._closed:
            conn.reused = True
            self._put_back(conn)
        else:
            conn.broken = True
            if conn.transport is not None:
                conn.transport.close()
            self._release_slot()
        return resp

    async def close(self) -> None:
        """Fail waiters, close idle and in-flight connections, wait (briefly) until closed."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self._deadlines.clear()
        exc = UpstreamError("pool is closed", self._name)
        while self._waiters:
            w = self._waiters.popleft()
            if not w.done():
                w.set_exception(exc)
        idle, self._idle = self._idle, []
        self._open -= len(idle)
        for conn in idle:
            conn.broken = True
            if conn.transport is not None:
                conn.transport.close()
        for conn in list(self._conns):
            if conn.leased:
                conn._kill()
                conn._fail(UpstreamError("pool is closed", self._name))
        if self._conns:
            loop = self._loop or asyncio.get_running_loop()
            self._all_lost = fut = loop.create_future()
            try:
                await asyncio.wait_for(asyncio.shield(fut), 1.0)
            except TimeoutError:
                pass
            finally:
                self._all_lost = None

    # ---- exchange deadlines ----------------------------------------------------------------
    def _watch(
        self, deadline: float, conn: _Conn, waiter: asyncio.Future[UpstreamResponse]
    ) -> None:
        """Time out ``conn``'s exchange at ``deadline``.

        A uvloop ``call_at`` + ``cancel`` costs ~3 µs (a libuv timer per call), a fifth of a whole
        exchange. Deadlines of one pool almost always arrive in increasing order (same timeout,
        monotonic clock), so they go to a FIFO with a single timer armed for the oldest; entries
        of finished exchanges are dropped lazily. An out-of-order deadline (a shorter per-call
        timeout) gets its own timer.
        """
        deadlines = self._deadlines
        if deadlines and deadline < deadlines[-1][0]:
            conn.timer = self._loop.call_at(deadline, conn._on_timeout)  # type: ignore[union-attr]
            return
        deadlines.append((deadline, conn, waiter))
        if self._sweeper is None or deadline < self._sweep_at:
            # (the second case: the queue was drained while the timer still waits for the
            # deadline of an exchange that finished long ago)
            if self._sweeper is not None:
                self._sweeper.cancel()
            self._sweeper = self._loop.call_at(deadline, self._sweep)  # type: ignore[union-attr]
            self._sweep_at = deadline

    def _sweep(self) -> None:
        self._sweeper = None
        loop = self._loop
        assert loop is not None
        now = loop.time()
        deadlines = self._deadlines
        while deadlines:
            deadline, conn, waiter = deadlines[0]
            if waiter.done():
                deadlines.popleft()
            elif deadline <= now + 0.001:  # timers may fire up to a clock tick early
                deadlines.popleft()
                conn._on_timeout()  # the waiter is pending, so it is conn's current exchange
            else:
                self._sweeper = loop.call_at(deadline, self._sweep)
                self._sweep_at = deadline
                return

    # ---- slot management -------------------------------------------------------------------
    async def _acquire(self, loop: asyncio.AbstractEventLoop, deadline: float) -> _Conn:
        if self._open < self._size:
            self._open += 1
            return await self._connect(loop, deadline)
        waiter: asyncio.Future[_Conn | None] = loop.create_future()
        self._waiters.append(waiter)
        timer = loop.call_at(deadline, self._expire_waiter, waiter)
        try:
            got = await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                # handed a connection/slot, but cancelled before we could use it
                given = waiter.result()
                if given is None:
                    self._release_slot()
                else:
                    self._put_back(given)
            raise
        finally:
            timer.cancel()
        if got is None:
            return await self._connect(loop, deadline)
        return got

    def _expire_waiter(self, waiter: asyncio.Future[_Conn | None]) -> None:
        if not waiter.done():
            waiter.set_exception(UpstreamTimeout("timed out waiting for a connection", self._name))

    async def _connect(self, loop: asyncio.AbstractEventLoop, deadline: float) -> _Conn:
        """Open a connection in a slot the caller already holds; frees the slot on failure."""
        remaining = deadline - loop.time()
        limit = min(self._connect_timeout, remaining)
        conn = self._conn_class(self, loop)
        try:
            if limit <= 0:
                raise TimeoutError
            async with asyncio.timeout(limit):
                await loop.create_connection(lambda: conn, self._host, self._port)
        except TimeoutError:
            self._release_slot()
            if self._connect_timeout < remaining:
                raise UpstreamConnectError(
                    f"connect timed out after {self._connect_timeout:g}s", self._name
                ) from None
            raise UpstreamTimeout("timed out while connecting", self._name) from None
        except OSError as exc:
            self._release_slot()
            raise UpstreamConnectError(f"connect failed: {exc}", self._name) from exc
        except BaseException:
            self._release_slot()
            raise
        if self._closed:
            conn._kill()
            self._release_slot()
            raise UpstreamError("pool is closed", self._name)
        return conn

    def _put_back(self, conn: _Conn) -> None:
        """A reusable connection: hand it to the oldest waiter, or park it as idle."""
        waiters = self._waiters
        while waiters:
            w = waiters.popleft()
            if not w.done():
                w.set_result(conn)
                return
        conn.leased = False
        self._idle.append(conn)

    def _release_slot(self) -> None:
        """A connection is gone (or was never made): hand its slot on, or free it."""
        waiters = self._waiters
        while waiters:
            w = waiters.popleft()
            if not w.done():
                w.set_result(None)
                return
        self._open -= 1

    def _conn_lost(self, conn: _Conn) -> None:
        self._conns.discard(conn)
        if not conn.leased:
            # an idle keep-alive connection closed by the server
            conn.leased = True
            try:
                self._idle.remove(conn)
            except ValueError:
                pass  # already taken out by close()
            else:
                self._release_slot()
        if self._all_lost is not None and not self._conns and not self._all_lost.done():
            self._all_lost.set_result(None)
