"""A near-free HTTP/1.1 upstream for benchmarks: uvloop + httptools, fixed JSON answer.

It costs a few microseconds per request so that the proxy under test is the bottleneck.
``python benchmarks/stub_upstream.py PORT [DELAY_MS]`` serves until killed; with DELAY_MS each
answer waits that long (a stand-in for a real model's inference time).
"""

from __future__ import annotations

import asyncio
import sys

import httptools
import uvloop

BODY = b'{"score": 0.4231, "label": 0, "model": "stub"}'
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
    + str(len(BODY)).encode()
    + b"\r\n\r\n"
    + BODY
)


class StubProtocol(asyncio.Protocol):
    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop: not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            import socket

            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()

    def on_message_complete(self) -> None:
        if self.transport is None:
            return
        if self.delay:
            loop = asyncio.get_running_loop()
            loop.call_later(self.delay, self._reply)
        else:
            self.transport.write(RESPONSE)

    def _reply(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(RESPONSE)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def serve(port: int, delay: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: StubProtocol(delay), "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    port = int(sys.argv[1])
    delay_ms = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
    uvloop.run(serve(port, delay_ms / 1000.0))
