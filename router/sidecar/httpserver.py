"""A small HTTP/1.1 server on ``asyncio.Protocol`` + ``httptools`` (llhttp), for the hot path.

aiohttp's server costs about 70 µs of CPU per request on this class of machine; the same work on a
raw protocol with llhttp costs about 10 µs, and the proxy does little else. The server does only
what a sidecar needs, carefully, in four small modules read top to bottom:

- :mod:`router.sidecar.http_messages`: :class:`Request`, :class:`Response` and their encoding;
- :mod:`router.sidecar.http_limits`: :class:`HttpLimits`, every bound and what it refuses;
- :mod:`router.sidecar.http_protocol`: one connection (parsing, pipelining, refusals, timeouts);
- this module: :class:`HttpServer`, the listening socket, the timeout sweep and the stop.

Graceful stop: stop accepting, finish in-flight requests, close idle connections (bounded).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl as _ssl
import time
from collections.abc import Callable

from router.sidecar.http_limits import HttpLimits
from router.sidecar.http_messages import Handler
from router.sidecar.http_protocol import HttpProtocol

log = logging.getLogger("router.http")


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
        ssl: _ssl.SSLContext | None = None,
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
        self.ssl = ssl  # TLS on the listener (listen_tls), None for plain HTTP

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
            lambda: HttpProtocol(self), sock=sock, backlog=backlog, ssl=self.ssl,
            ssl_handshake_timeout=self.limits.header_timeout if self.ssl is not None else None,
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
