"""UpstreamPool against real servers: aiohttp.web for normal traffic, raw asyncio servers for
malformed or unusual framings. Every test runs on both the default asyncio loop and uvloop
(production runs uvloop)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import orjson
import pytest
import uvloop
from aiohttp import web
from multidict import CIMultiDict

from router.sidecar.upstream import UpstreamPool
from router.sidecar.upstream_types import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamNotRetriedError,
    UpstreamProtocolError,
    UpstreamResponse,
    UpstreamTimeout,
)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, None]], None]:
    factory = uvloop.new_event_loop if request.param == "uvloop" else asyncio.new_event_loop

    def _run(coro: Coroutine[Any, Any, None]) -> None:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(asyncio.wait_for(coro, 10.0))

    return _run


# ---- servers ---------------------------------------------------------------------------------
class Stats:
    def __init__(self) -> None:
        self.connections = 0
        self.open = 0
        self.max_open = 0
        self.requests: list[bytes] = []


def _aiohttp_app() -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.Response(
            body=body,
            headers={"X-Method": request.method, "X-Path-Qs": request.raw_path},
            content_type="application/octet-stream",
        )

    async def seen_headers(request: web.Request) -> web.Response:
        raw = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.raw_headers]
        return web.Response(body=orjson.dumps(raw), content_type="application/json")

    async def dup(request: web.Request) -> web.Response:
        headers = CIMultiDict(
            [("Set-Cookie", "a=1"), ("X-Dup", "one"), ("Set-Cookie", "b=2"), ("X-Dup", "two")]
        )
        return web.Response(text="dup", headers=headers)

    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(5):
            await resp.write(bytes([i]) * (1000 * (i + 1)))
            await asyncio.sleep(0.001)
        await resp.write_eof()
        return resp

    async def sized(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * 100)

    async def status(request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        if code == 304:
            return web.Response(status=304, headers={"ETag": '"v1"'})
        return web.Response(status=code)

    async def close(request: web.Request) -> web.Response:
        resp = web.Response(text="bye")
        resp.force_close()
        return resp

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("s", "5")))
        return web.Response(text="late")

    async def peer(request: web.Request) -> web.Response:
        assert request.transport is not None
        return web.Response(text=str(request.transport.get_extra_info("peername")[1]))

    app = web.Application(client_max_size=4 * 1024 * 1024)
    app.router.add_route("*", "/echo", echo)
    app.router.add_get("/headers", seen_headers)
    app.router.add_get("/dup", dup)
    app.router.add_get("/chunked", chunked)
    app.router.add_get("/sized", sized)
    app.router.add_get("/status/{code}", status)
    app.router.add_get("/close", close)
    app.router.add_route("*", "/slow", slow)
    app.router.add_get("/peer", peer)
    return app


@contextlib.asynccontextmanager
async def aiohttp_server() -> AsyncIterator[int]:
    runner = web.AppRunner(_aiohttp_app(), shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield port
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[tuple[int, Stats]]:
    """asyncio.start_server running ``handler`` per connection, with connection accounting."""
    stats = Stats()
    tasks: set[asyncio.Task[None]] = set()

    async def wrapped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        stats.connections += 1
        stats.open += 1
        stats.max_open = max(stats.max_open, stats.open)
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # client went away, or the server is being torn down
        finally:
            stats.open -= 1
            writer.close()
            tasks.discard(task)

    server = await asyncio.start_server(wrapped, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port, stats
    finally:
        server.close()
        for t in list(tasks):
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """(head, body) of one request with an optional Content-Length body."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    body = await reader.readexactly(length) if length else b""
    return head, body


def canned(*answers: bytes, close_after: bool = False) -> Handler:
    """Serve ``answers`` in turn, one per request, on every connection."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for answer in answers:
            await read_request(reader)
            writer.write(answer)
            await writer.drain()
        if close_after:
            return
        await reader.read()  # keep the connection open until the client closes it

    return handler


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
H = [(b"Host", b"upstream")]


def header(resp: UpstreamResponse, name: bytes) -> bytes | None:
    for k, v in resp.headers:
        if k.lower() == name.lower():
            return v
    return None


# ---- round trips -----------------------------------------------------------------------------
def test_get_post_roundtrip_and_keepalive_reuse(run: Callable[..., None]) -> None:
    async def main() -> None:
        async with aiohttp_server() as port:
            pool = UpstreamPool("127.0.0.1", port)
            r = await pool.request(b"GET", b"/echo?x=1&y=%20z", H)
            assert (r.status, r.reason, r.body, r.keep_alive) == (200, b"OK", b"", True)
            assert header(r, b"X-Method") == b"GET"
            assert header(r, b"X-Path-Qs") == b"/echo?x=1&y=%20z"
            body = b'{"features": [1, 2, 3]}'
            r = await pool.request(b"POST", b"/echo", [*H, (b"Content-Type", b"a/json")], body)
            assert r.body == body and header(r, b"X-Method") == b"POST"
            assert header(r, b"Content-Length") == str(len(body)).encode()
            # one connection, reused (LIFO idle list)
            peers = {(await pool.request(b"GET", b"/peer", H)).body for _ in range(5)}
            assert len(peers) == 1
            assert (pool.in_use, pool.idle) == (0, 1)
            await pool.close()

    run(main())


def test_binary_and_1mb_bodies_are_byte_identical(run: Callable[..., None]) -> None:
    async def main() -> None:
        async with aiohttp_server() as port:
            pool = UpstreamPool("127.0.0.1", port)
            for body in (bytes(range(256)) * 4, b"\r\n\r\n\x00HTTP/1.1 200", os.urandom(1 << 20)):
                r = await pool.request(b"PUT", b"/echo", H, body)
                assert r.status == 200 and r.body == body
            # a wrong caller Content-Length is replaced by the real one
            r = await pool.request(b"POST", b"/echo", [*H, (b"content-length", b"999")], b"abc")
            assert r.body == b"abc"
            await pool.close()

    run(main())


def test_request_framing_headers(run: Callable[..., None]) -> None:
    heads: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head, _ = await read_request(reader)
            heads.append(head)
            writer.write(OK)

    async def main() -> None:
        async with raw_server(handler) as (port, stats):
            pool = UpstreamPool("127.0.0.1", port)
            await pool.request(b"GET", b"/a?q=1", [(b"Host", b"h"), (b"Content-Length", b"5")])
            await pool.request(b"HEAD", b"/b", [(b"Host", b"h")])
            await pool.request(b"POST", b"/c", [(b"Host", b"h")])
            await pool.request(b"DELETE", b"/d", [(b"Transfer-Encoding", b"chunked")], b"xy")
            await pool.close()
            assert heads[0] == b"GET /a?q=1 HTTP/1.1\r\nHost: h\r\n\r\n"
            assert heads[1] == b"HEAD /b HTTP/1.1\r\nHost: h\r\n\r\n"
            assert heads[2] == b"POST /c HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n"
            assert heads[3] == b"DELETE /d HTTP/1.1\r\nContent-Length: 2\r\n\r\n"
            assert stats.connections == 1

    run(main())


def test_header_order_and_duplicates_preserved(run: Callable[..., None]) -> None:
    async def main() -> None:
        async with aiohttp_server() as port:
            pool = UpstreamPool("127.0.0.1", port)
            sent = [(b"Host", b"up"), (b"X-A", b"1"), (b"x-b", b"2"), (b"X-A", b"3")]
            r = await pool.request(b"GET", b"/headers", sent)
            seen = [(k.encode(), v.encode()) for k, v in orjson.loads(r.body)]
            assert seen[: len(sent)] == sent
            r = await pool.request(b"GET", b"/dup", H)
            got = [(k, v) for k, v in r.headers if k in (b"Set-Cookie", b"X-Dup")]
            assert got == [
                (b"Set-Cookie", b"a=1"),
                (b"X-Dup", b"one"),
                (b"Set-Cookie", b"b=2"),
                (b"X-Dup", b"two"),
            ]
            await pool.close()

    run(main())


# ---- response framing ------------------------------------------------------------------------
def test_chunked_response(run: Callable[..., None]) -> None:
    raw = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\n"
    )

    async def main() -> None:
        async with aiohttp_server() as port:
            pool = UpstreamPool("127.0.0.1", port)
            r = await pool.request(b"GET", b"/chunked", H)
            assert r.body == b"".join(bytes([i]) * (1000 * (i + 1)) for i in range(5))
            assert header(r, b"Transfer-Encoding") == b"chunked" and r.keep_alive
            await pool.close()
        async with raw_server(canned(raw, OK)) as (port, stats):
            pool = UpstreamPool("127.0.0.1", port)
            assert (await pool.request(b"GET", b"/", H)).body == b"hello world"
            assert (await pool.request(b"GET", b"/", H)).body == b"ok"
            assert stats.connections == 1
            await pool.close()

    run(main())


def test_head_has_no_body_and_connection_is_reused(run: Callable[..., None]) -> None:
    async def main() -> None:
        async with aiohttp_server() as port:
            pool = UpstreamPool("127.0.0.1", port)
            r = await pool.request(b"HEAD", b"/sized", H)
            assert (r.status, r.body, r.keep_alive) == (200, b"", True)
            assert header(r, b"Content-Length") == b"100"
            r = await pool.request(b"GET", b"/sized", H)
            assert r.body == b"x" * 100
            assert pool.idle == 1
            await pool.close()
        # HEAD answers announcing a chunked or sized body that never comes
        te = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        cl = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
        async with raw_server(canned(te, cl, OK)) as (port, stats):
            pool = UpstreamPool("127.0.0.1", port)
            for _ in range(2):
                r = await pool.request(b"HEAD", b"/", H)
                assert (r.status, r.body, r.keep_alive) == (200, b"", True)
            assert (await pool.request(b"GET", b"/", H)).body == b"ok"
            assert stats.connections == 1
            await pool.close()

    run(main())


def test_204_304_and_interim_1xx(run: Callable[..., None]) -> None:
    answers = (
        b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n",
        b'HTTP/1.1 304 Not Modified\r\nETag: "v"\r\nContent-Length: 12\r\n\r\n',
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
        b"HTTP/1.1 201 Created\r\nContent-Length: 3\r\n\r\nnew",
        OK,
    )

    async def main() -> None:
        async with aiohttp_server() as port:
            pool = UpstreamPool("127.0.0.1", port)
            r = await pool.request(b"GET", b"/status/204", H)
            assert (r.status, r.body, r.keep_alive) == (204, b"", True)
            r = await pool.request(b"GET", b"/status/304", H)
            assert (r.status, r.body) == (304, b"")
            assert (await pool.request(b"GET", b"/sized", H)).body == b"x" * 100
            await pool.close()
        async with raw_server(canned(*answers)) as (port, stats):
            pool = UpstreamPool("127.0.0.1", port)
            r = await pool.request(b"GET", b"/", H)
            assert (r.status, r.reason, r.body, r.headers) == (
                204,
                b"No Content",
                b"",
                [(b"X-A", b"1")],
            )
            r = await pool.request(b"GET", b"/", H)
            assert (r.status, r.body) == (304, b"")
            r = await pool.request(b"POST", b"/", H, b"data")
            assert (r.status, r.reason, r.body) == (201, b"Created", b"new")
            assert r.headers == [(b"Content-Length", b"3")]
            assert (await pool.request(b"GET", b"/", H)).body == b"ok"
            assert stats.connections == 1
            await pool.close()

    run(main())


def test_connection_close_and_http10_and_read_until_close(run: Callable[..., None]) -> None:
    async def main() -> None:
        async with aiohttp_server() as port:
            pool = UpstreamPool("127.0.0.1", port)
            r = await pool.request(b"GET", b"/close", H)
            assert (r.body, r.keep_alive) == (b"bye", False)
            assert (pool.in_use, pool.idle) == (0, 0)
            p1 = (await pool.request(b"GET", b"/peer", H)).body
            await pool.request(b"GET", b"/close", H)
            p2 = (await pool.request(b"GET", b"/peer", H)).body
            assert p1 != p2
            await pool.close()
        for answer, body in (
            (b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nold", b"old"),
            (b"HTTP/1.0 200 OK\r\n\r\nuntil close", b"until close"),
            (
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n" + b"z" * 100_000,
                b"z" * 100_000,
            ),
        ):
            async with raw_server(canned(answer, close_after=True)) as (port, stats):
                pool = UpstreamPool("127.0.0.1", port)
                for _ in range(2):
                    r = await pool.request(b"GET", b"/", H)
                    assert (r.status, r.body, r.keep_alive) == (200, body, False)
                    assert (pool.in_use, pool.idle) == (0, 0)
                assert stats.connections == 2
                await pool.close()
        keep = b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok"
        async with raw_server(canned(keep, keep)) as (port, stats):
            pool = UpstreamPool("127.0.0.1", port)
            for _ in range(2):
                assert (await pool.request(b"GET", b"/", H)).keep_alive
            assert stats.connections == 1
            await pool.close()

    run(main())


# ---- connection loss and retry ---------------------------------------------------------------
def test_server_closing_idle_keepalive_is_retried(run: Callable[..., None]) -> None:
    async def race(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # answer one request with keep-alive, then close as soon as the next one arrives
        # (the server's idle-timeout race seen from the client)
        await read_request(reader)
        writer.write(OK)
        await reader.readuntil(b"\r\n\r\n")

    async def idle_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(OK)
        await asyncio.sleep(0.02)  # a short server keep-alive timeout

    async def main() -> None:
        async with raw_server(race) as (port, stats):
            pool = UpstreamPool("127.0.0.1", port)
            assert (await pool.request(b"GET", b"/", H)).body == b"ok"
            # reused connection dies before any byte -> one retry on a fresh connection, for
            # idempotent methods (PUT here; POST: see test_item5_...)
            r = await pool.request(b"PUT", b"/", H, b"payload")
            assert r.body == b"ok"
            assert (await pool.request(b"GET", b"/", H)).body == b"ok"
            assert stats.connections == 3
            assert pool.in_use == 0
            await pool.close()
        async with raw_server(idle_close) as (port, stats):
            pool = UpstreamPool("127.0.0.1", port)
            for _ in range(3):
                assert (await pool.request(b"GET", b"/", H)).body == b"ok"
                assert pool.idle == 1
                await asyncio.sleep(0.1)
                assert (pool.idle, pool.in_use) == (0, 0)  # noticed and dropped while idle
            assert stats.connections == 3
            await pool.close()

    run(main())


def test_item5_post_read_then_closed_is_not_sent_again(run: Callable[..., None]) -> None:
    """The upstream reads a POST on a reused connection and closes without answering: it may
    have acted on it, so the pool must not send it a second time."""
    seen: list[bytes] = []

    async def read_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head, _ = await read_request(reader)
        seen.append(head.split(b" ", 1)[0])
        writer.write(OK)
        head, body = await read_request(reader)  # the whole request, then a close
        seen.append(head.split(b" ", 1)[0] + b" " + body)

    async def main() -> None:
        async with raw_server(read_then_close) as (port, stats):
            pool = UpstreamPool("127.0.0.1", port)
            assert (await pool.request(b"GET", b"/", H)).body == b"ok"
            for method in (b"POST", b"PATCH"):
                with pytest.raises(UpstreamNotRetriedError, match="not retried"):
                    await pool.request(method, b"/", H, b"order-42")
                assert (await pool.request(b"GET", b"/", H)).body == b"ok"
            assert seen == [b"GET", b"POST order-42", b"GET", b"PATCH order-42", b"GET"]
            assert stats.connections == 3  # no connection was opened to send a POST again
            assert (pool.in_use, pool.idle) == (0, 1)
            await pool.close()

    run(main())


def test_item5_post_whose_write_failed_is_retried(run: Callable[..., None]) -> None:
    """The upstream resets an idle keep-alive connection and the event loop has not noticed
    yet: the POST's write fails at once, so not a byte of it left, and it is sent once on a
    new connection."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(4)
    port = lsock.getsockname()[1]
    reset, was_reset = threading.Event(), threading.Event()
    received: list[bytes] = []

    def serve() -> None:
        c1, _ = lsock.accept()
        while b"\r\n\r\n" not in c1.recv(65536):
            pass
        c1.sendall(OK)
        reset.wait(5)
        c1.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c1.close()  # an RST
        was_reset.set()
        c2, _ = lsock.accept()
        data = b""
        while not data.endswith(b"payload"):
            data += c2.recv(65536)
        received.append(data)
        c2.sendall(OK)
        c2.recv(1)  # until the client closes
        c2.close()

    async def main() -> None:
        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        pool = UpstreamPool("127.0.0.1", port)
        assert (await pool.request(b"GET", b"/", H)).body == b"ok"
        reset.set()
        assert was_reset.wait(5)
        time.sleep(0.05)  # (blocking: the loop must not see the reset before the write)
        r = await pool.request(b"POST", b"/", H, b"payload")
        assert r.body == b"ok"
        assert len(received) == 1 and received[0].startswith(b"POST / HTTP/1.1")
        await pool.close()
        await asyncio.to_thread(thread.join, 5)

    try:
        run(main())
    finally:
        lsock.close()


def test_fresh_connection_closed_without_answer_is_not_retried(run: Callable[..., None]) -> None:
    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")

    async def main() -> None:
        async with raw_server(mute) as (port, stats):
            pool = UpstreamPool("127.0.0.1", port)
            with pytest.raises(UpstreamProtocolError) as ei:
                await pool.request(b"GET", b"/", H)
            assert ei.value.upstream == f"127.0.0.1:{port}"
            assert stats.connections == 1
            assert (pool.in_use, pool.idle) == (0, 0)
            await pool.close()

    run(main())


def test_server_dying_mid_response(run: Callable[..., None]) -> None:
    broken = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten..",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Le",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n",
    )

    async def main() -> None:
        for answer in broken:
            async with raw_server(canned(OK, answer, close_after=True)) as (port, stats):
                pool = UpstreamPool("127.0.0.1", port)
                assert (await pool.request(b"GET", b"/", H)).body == b"ok"
                with pytest.raises(UpstreamProtocolError, match="lost mid"):
                    await pool.request(b"GET", b"/", H)
                assert (pool.in_use, pool.idle) == (0, 0)
                assert stats.connections == 1  # mid-response loss is never retried
                await pool.close()

    run(main())


def test_malformed_and_unsolicited_responses(run: Callable[..., None]) -> None:
    extra = OK + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno"

    async def unsolicited(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(OK)
        await asyncio.sleep(0.05)
        writer.write(b"HTTP/1.1 200 OK\r\n")
        await reader.read()

    async def main() -> None:
        for answer in (b"HELLO WORLD\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"):
            async with raw_server(canned(answer)) as (port, _):
                pool = UpstreamPool("127.0.0.1", port)
                with pytest.raises(UpstreamProtocolError, match="malformed"):
                    await pool.request(b"GET", b"/", H)
                assert (pool.in_use, pool.idle) == (0, 0)
                await pool.close()
        # two answers to one request: the first is returned, the connection is not reused
        async with raw_server(canned(extra, OK)) as (port, stats):
            pool = UpstreamPool("127.0.0.1", port)
            assert (await pool.request(b"GET", b"/", H)).body == b"ok"
            assert (await pool.request(b"GET", b"/", H)).body == b"ok"
            assert stats.connections == 2
            await pool.close()
        # bytes on an idle connection: it is dropped, the next request uses a new one
        async with raw_server(unsolicited) as (port, stats):
            pool = UpstreamPool("127.0.0.1", port)
            await pool.request(b"GET", b"/", H)
            await asyncio.sleep(0.15)
            assert (pool.idle, pool.in_use) == (0, 0)
            await pool.request(b"GET", b"/", H)
            assert stats.connections == 2
            await pool.close()

    run(main())


def test_connection_refused(run: Callable[..., None]) -> None:
    async def main() -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]  # bound, not listening: refused
            pool = UpstreamPool("127.0.0.1", port, pool_size=2)
            for _ in range(3):
                with pytest.raises(UpstreamConnectError) as ei:
                    await pool.request(b"GET", b"/", H)
                assert ei.value.upstream == f"127.0.0.1:{port}"
            assert (pool.in_use, pool.idle) == (0, 0)
            results = await asyncio.gather(
                *(pool.request(b"GET", b"/", H) for _ in range(10)), return_exceptions=True
            )
            assert all(isinstance(r, UpstreamConnectError) for r in results)
            assert (pool.in_use, pool.idle) == (0, 0)
            await pool.close()

    run(main())


# ---- timeouts, pool bound, cancellation, close -----------------------------------------------
def test_slow_server_times_out_and_frees_the_slot(run: Callable[..., None]) -> None:
    async def main() -> None:
        async with aiohttp_server() as port:
            pool = UpstreamPool("127.0.0.1", port, pool_size=1, timeout=0.15)
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            with pytest.raises(UpstreamTimeout):
                await pool.request(b"GET", b"/slow?s=5", H)
            assert 0.1 < loop.time() - t0 < 1.0
            assert (pool.in_use, pool.idle) == (0, 0)
            with pytest.raises(UpstreamTimeout):
                await pool.request(b"POST", b"/slow?s=5", H, b"x", timeout=0.05)
            r = await pool.request(b"GET", b"/slow?s=0.01", H)
            assert r.body == b"late"
            # a waiter times out within its own timeout while the only slot is busy
            busy = asyncio.ensure_future(pool.request(b"GET", b"/slow?s=0.3", H, timeout=2.0))
            await asyncio.sleep(0.02)
            with pytest.raises(UpstreamTimeout, match="waiting"):
                await pool.request(b"GET", b"/sized", H, timeout=0.05)
            assert (await busy).body == b"late"
            assert (pool.in_use, pool.idle) == (0, 1)
            await pool.close()
            # deadlines out of start order: a short per-call timeout behind a long one, and
            # several exchanges expiring from the same deadline queue
            pool = UpstreamPool("127.0.0.1", port, pool_size=4, timeout=2.0)
            long = asyncio.ensure_future(pool.request(b"GET", b"/slow?s=0.3", H))
            await asyncio.sleep(0.02)
            t0 = loop.time()
            with pytest.raises(UpstreamTimeout):
                await pool.request(b"GET", b"/slow?s=5", H, timeout=0.1)
            assert loop.time() - t0 < 0.25
            assert (await long).body == b"late"
            # (the queue's timer is still armed for the finished long exchange's deadline)
            t0 = loop.time()
            results = await asyncio.gather(
                *(pool.request(b"GET", b"/slow?s=5", H, timeout=0.1) for _ in range(3)),
                pool.request(b"GET", b"/slow?s=0.01", H, timeout=0.5),
                return_exceptions=True,
            )
            assert [type(r) for r in results[:3]] == [UpstreamTimeout] * 3
            assert loop.time() - t0 < 0.4
            assert isinstance(results[3], UpstreamResponse) and results[3].body == b"late"
            assert pool.in_use == 0
            await pool.close()

    run(main())


def test_pool_bound_under_200_concurrent_requests_fifo(run: Callable[..., None]) -> None:
    order: list[int] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head, _ = await read_request(reader)
            await asyncio.sleep(0.002)
            n = int(head.split(b" ")[1][1:])
            order.append(n)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%d" % (len(str(n)), n))

    async def main() -> None:
        async with raw_server(handler) as (port, stats):
            pool = UpstreamPool("127.0.0.1", port, pool_size=8)
            seen_in_use: list[int] = []

            async def one(i: int) -> bytes:
                r = await pool.request(b"GET", b"/%d" % i, H)
                seen_in_use.append(pool.in_use)
                return r.body

            bodies = await asyncio.gather(*(one(i) for i in range(200)))
            assert bodies == [b"%d" % i for i in range(200)]
            assert stats.max_open <= 8 and stats.connections == 8
            assert max(seen_in_use) <= 8
            assert (pool.in_use, pool.idle) == (0, 8)
            # FIFO: with one connection, waiters are served in arrival order
            order.clear()
            single = UpstreamPool("127.0.0.1", port, pool_size=1)
            await asyncio.gather(*(single.request(b"GET", b"/%d" % i, H) for i in range(20)))
            assert order == list(range(20))
            await single.close()
            await pool.close()

    run(main())


def test_cancellation_frees_slots(run: Callable[..., None]) -> None:
    async def main() -> None:
        async with aiohttp_server() as port:
            pool = UpstreamPool("127.0.0.1", port, pool_size=2)
            tasks = [asyncio.ensure_future(pool.request(b"GET", b"/slow?s=5", H)) for _ in range(5)]
            await asyncio.sleep(0.1)
            assert pool.in_use == 2  # two exchanges in flight, three waiting
            for t in tasks:
                t.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            assert all(isinstance(r, asyncio.CancelledError) for r in results)
            assert (pool.in_use, pool.idle) == (0, 0)
            r = await asyncio.gather(*(pool.request(b"GET", b"/sized", H) for _ in range(4)))
            assert all(x.body == b"x" * 100 for x in r)
            assert (pool.in_use, pool.idle) == (0, 2)
            # cancelled while connecting / right after being handed a connection
            for delay in (0, 0.0005, 0.001, 0.002):
                t = asyncio.ensure_future(pool.request(b"GET", b"/sized", H))
                await asyncio.sleep(delay)
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await t
                assert pool.in_use == 0 and pool.idle <= 2
            assert (await pool.request(b"GET", b"/sized", H)).status == 200
            await pool.close()

    run(main())


def test_close_fails_in_flight_and_waiting_requests(run: Callable[..., None]) -> None:
    async def main() -> None:
        async with aiohttp_server() as port:
            pool = UpstreamPool("127.0.0.1", port, pool_size=2)
            await asyncio.gather(*(pool.request(b"GET", b"/sized", H) for _ in range(2)))
            assert pool.idle == 2
            pending = [
                asyncio.ensure_future(pool.request(b"GET", b"/slow?s=5", H)) for _ in range(3)
            ]
            await asyncio.sleep(0.05)
            await pool.close()
            results = await asyncio.gather(*pending, return_exceptions=True)
            assert all(type(r) is UpstreamError for r in results), results
            assert (pool.in_use, pool.idle) == (0, 0)
            with pytest.raises(UpstreamError, match="closed"):
                await pool.request(b"GET", b"/sized", H)
            await pool.close()  # idempotent

    run(main())


# ---- issue 12 --------------------------------------------------------------------------------
def test_item4_response_trailers_are_dropped_not_merged(run: Callable[..., None]) -> None:
    answer = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Real: 1\r\n\r\n"
        b"5\r\nhello\r\n0\r\nSet-Cookie: session=evil\r\nX-Real: 2\r\n\r\n"
    )

    async def main() -> None:
        async with raw_server(canned(answer, answer)) as (port, stats):
            pool = UpstreamPool("127.0.0.1", port)
            for _ in range(2):
                r = await pool.request(b"GET", b"/", H)
                assert r.body == b"hello" and r.dropped_trailers == 2
                assert r.headers == [(b"Transfer-Encoding", b"chunked"), (b"X-Real", b"1")]
            assert stats.connections == 1  # the connection stays in sync after the trailers
            await pool.close()

    run(main())


def test_item9_unsolicited_101_fails_the_exchange(run: Callable[..., None]) -> None:
    answer = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        b"\x81\x05hello"
    )

    async def main() -> None:
        async with raw_server(canned(answer)) as (port, _):
            pool = UpstreamPool("127.0.0.1", port)
            with pytest.raises(UpstreamProtocolError, match="101"):
                await pool.request(b"GET", b"/", H)
            assert (pool.in_use, pool.idle) == (0, 0)  # that connection is never reused
            await pool.close()

    run(main())


def test_item7_capped_pool_keeps_a_prefix_and_measures_the_whole_answer(
    run: Callable[..., None],
) -> None:
    big = os.urandom(3 * 1024 * 1024)
    sized = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(big) + big
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"".join(
            b"%x\r\n%s\r\n" % (len(c), c) for c in (big[:1000], big[1000:200_000], big[200_000:])
        )
        + b"0\r\n\r\n"
    )

    async def main() -> None:
        async with raw_server(canned(sized, chunked, OK)) as (port, stats):
            pool = UpstreamPool("127.0.0.1", port, max_response_body=65536)
            for _ in range(2):
                r = await pool.request(b"GET", b"/", H)
                assert r.truncated and r.body == big[:65536] and r.body_bytes == len(big)
            r = await pool.request(b"GET", b"/", H)
            assert (r.truncated, r.body, r.body_bytes) == (False, b"ok", 2)
            assert stats.connections == 1  # the discarded rest was read: still in sync
            await pool.close()

    run(main())
