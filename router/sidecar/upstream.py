"""Keep-alive HTTP/1.1 client pool to one upstream, on ``asyncio.Protocol`` + httptools (llhttp).

This is the hottest code in the router: every proxied and every shadow request goes through
:meth:`UpstreamPool.request`. ``aiohttp.ClientSession`` costs ~170-210 µs of CPU per call; this
client does one ``transport.write`` of a pre-joined buffer, parses the answer with a reused
per-connection ``httptools.HttpResponseParser`` and allocates per request only what it must
(the request buffer, one future, one deadline-queue entry, the response).

The connection itself (framing, reuse, trailers, the body cap) is
:mod:`router.sidecar.upstream_conn`; what an exchange returns or raises is
:mod:`router.sidecar.upstream_types`.

Semantics
---------
* At most ``pool_size`` connections exist (connecting + busy + idle). Idle connections are
  reused LIFO (the most recently used socket is the least likely to have been closed by the
  server's idle timeout). When all slots are taken, callers wait FIFO, within their timeout; a
  released connection (or a freed slot) is handed directly to the oldest waiter.
* ``timeout`` covers the whole exchange: waiting for a slot, connecting, writing and reading the
  full response. ``connect_timeout`` additionally bounds the TCP connect.
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
* Cancelling the awaiting task aborts that connection and frees its pool slot.
* Streaming (``stream_over`` set): an answer that is chunked, close-delimited, an event stream
  or longer than ``stream_over`` bytes is returned at its headers with ``resp.stream``
  (:mod:`router.sidecar.upstream_stream`); ``timeout`` then covers the exchange up to the
  headers, ``read_timeout`` each pause between two reads of the body and
  ``stream_max_duration`` the whole body. The connection keeps its slot until the stream ends,
  and returns to the pool only after a complete body on a keep-alive connection.
* TLS (``ssl`` set): the connection is wrapped with that context, the certificate is checked
  against ``server_hostname`` (SNI), and a failed handshake is :class:`UpstreamTLSError`.
"""

from __future__ import annotations

import asyncio
import collections
import ssl as _ssl

from router.sidecar.upstream_conn import CappedConn, Conn, Lost, build_request
from router.sidecar.upstream_types import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamNotRetriedError,
    UpstreamProtocolError,
    UpstreamResponse,
    UpstreamTimeout,
    UpstreamTLSError,
)

IDEMPOTENT_METHODS = frozenset((b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"))


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
        stream_over: int | None = None,
        stream_keep: int = 1024 * 1024,
        stream_high: int = 64 * 1024,
        read_timeout: float | None = None,
        stream_max_duration: float = 600.0,
        ssl: _ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> None:
        if pool_size < 1:
            raise ValueError("pool_size must be >= 1")
        self.stream_over = stream_over  # (a plain attribute: read once per answer)
        self.stream_keep = stream_keep
        self.stream_high = stream_high
        self.read_timeout = timeout if read_timeout is None else read_timeout
        self.stream_max_duration = stream_max_duration
        self._ssl = ssl
        self._server_hostname = (server_hostname or host) if ssl is not None else None
        self._max_body = max_response_body
        self._conn_class: type[Conn] = Conn if max_response_body is None else CappedConn
        self._host = host
        self._port = port
        self._name = f"{host}:{port}"
        self._size = pool_size
        self._connect_timeout = connect_timeout
        self._timeout = timeout
        self._loop = loop
        self._open = 0  # slots taken: connecting + busy + idle
        self._idle: list[Conn] = []  # LIFO
        self._waiters: collections.deque[asyncio.Future[Conn | None]] = collections.deque()
        self._conns: set[Conn] = set()  # every connected socket (for close())
        self._closed = False
        self._all_lost: asyncio.Future[None] | None = None
        # exchange deadlines in start order; one timer for the earliest (see watch)
        self._deadlines: collections.deque[
            tuple[float, Conn, asyncio.Future[UpstreamResponse]]
        ] = collections.deque()
        self._sweeper: asyncio.TimerHandle | None = None
        self._sweep_at = 0.0  # when _sweeper fires

    @property
    def upstream(self) -> str:
        return self._name

    @property
    def max_response_body(self) -> int | None:
        return self._max_body

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
        data = build_request(method, target, headers, body)
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
            except Lost as lost:
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
                conn.kill()
                self._release_slot()
                raise
            break
        deadlines = self._deadlines
        while deadlines and deadlines[0][2].done():
            deadlines.popleft()
        if resp.stream is not None:
            return resp  # the connection is released when the stream ends (stream_released)
        if self._max_body is not None:  # a CappedConn: hand over its count
            resp.truncated = conn.truncated  # type: ignore[attr-defined]
            resp.body_bytes = conn.size  # type: ignore[attr-defined]
        self.stream_released(conn)
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
                conn.kill()
                conn.fail(UpstreamError("pool is closed", self._name))
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
    def watch(
        self, deadline: float, conn: Conn, waiter: asyncio.Future[UpstreamResponse]
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
            conn.timer = self._loop.call_at(deadline, conn.on_timeout)  # type: ignore[union-attr]
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
                conn.on_timeout()  # the waiter is pending, so it is conn's current exchange
            else:
                self._sweeper = loop.call_at(deadline, self._sweep)
                self._sweep_at = deadline
                return

    # ---- slot management -------------------------------------------------------------------
    async def _acquire(self, loop: asyncio.AbstractEventLoop, deadline: float) -> Conn:
        if self._open < self._size:
            self._open += 1
            return await self._connect(loop, deadline)
        waiter: asyncio.Future[Conn | None] = loop.create_future()
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

    def _expire_waiter(self, waiter: asyncio.Future[Conn | None]) -> None:
        if not waiter.done():
            waiter.set_exception(UpstreamTimeout("timed out waiting for a connection", self._name))

    async def _connect(self, loop: asyncio.AbstractEventLoop, deadline: float) -> Conn:
        """Open a connection in a slot the caller already holds; frees the slot on failure."""
        remaining = deadline - loop.time()
        limit = min(self._connect_timeout, remaining)
        conn = self._conn_class(self, loop)
        try:
            if limit <= 0:
                raise TimeoutError
            async with asyncio.timeout(limit):
                if self._ssl is None:
                    await loop.create_connection(lambda: conn, self._host, self._port)
                else:
                    await loop.create_connection(
                        lambda: conn, self._host, self._port, ssl=self._ssl,
                        server_hostname=self._server_hostname,
                        ssl_handshake_timeout=max(limit, 0.001),
                    )  # fmt: skip
        except TimeoutError:
            self._release_slot()
            if self._connect_timeout < remaining:
                raise UpstreamConnectError(
                    f"connect timed out after {self._connect_timeout:g}s", self._name
                ) from None
            raise UpstreamTimeout("timed out while connecting", self._name) from None
        except _ssl.SSLError as exc:
            self._release_slot()
            raise UpstreamTLSError(f"TLS handshake failed: {exc}", self._name) from exc
        except OSError as exc:
            self._release_slot()
            raise UpstreamConnectError(f"connect failed: {exc}", self._name) from exc
        except BaseException:
            self._release_slot()
            raise
        if self._closed:
            conn.kill()
            self._release_slot()
            raise UpstreamError("pool is closed", self._name)
        return conn

    def stream_released(self, conn: Conn) -> None:
        """An answer ended (a buffered one, or a stream): reuse the connection after a complete
        keep-alive body, otherwise close it and free its slot."""
        if self._max_body is not None:  # a CappedConn: reset its counters for the next answer
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

    def _put_back(self, conn: Conn) -> None:
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

    def conn_made(self, conn: Conn) -> None:
        self._conns.add(conn)

    def conn_lost(self, conn: Conn) -> None:
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
