"""The hot-path HTTP/1.1 server against raw sockets: framing, pipelining, limits, errors."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest

from router.sidecar.http_limits import HttpLimits
from router.sidecar.http_messages import Request, Response
from router.sidecar.httpserver import HttpServer
from tests.helpers import ROOT, wait_for


async def _echo(req: Request) -> Response:
    if req.path == "/slow":
        await asyncio.sleep(0.2)
    if req.path == "/boom":
        raise RuntimeError("handler bug")
    if req.path == "/empty":
        return Response(204, b"", [(b"X-A", b"1")])
    doc = {"method": req.method, "path": req.raw_path, "body": req.body.decode("latin-1"),
           "host": req.host, "query": req.query, "version": req.version}  # fmt: skip
    return Response(200, orjson.dumps(doc), [(b"Content-Type", b"application/json")])


@pytest.fixture
async def server() -> AsyncIterator[tuple[HttpServer, int, list[int]]]:
    refused: list[int] = []
    srv = HttpServer(
        _echo, max_body=1000, on_refused=lambda status, _reason: refused.append(status)
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    await srv.start(sock)
    yield srv, sock.getsockname()[1], refused
    await srv.stop(1.0)


async def _exchange(port: int, data: bytes, read_until_close: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    out = await asyncio.wait_for(reader.read(), 5) if read_until_close else b""
    writer.close()
    return out


def _responses(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    out = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            headers[k.decode().lower()] = v.strip().decode()
        n = int(headers.get("content-length", "0"))
        out.append((status, headers, rest[:n]))
        raw = rest[n:]
    return out


async def test_pipelined_requests_are_answered_in_order(server) -> None:  # type: ignore[no-untyped-def]
    _, port, _ = server
    req = (
        b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n"
        b"POST /b?x=1&y=%20z HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
        b"GET /c HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    )
    resps = _responses(await _exchange(port, req))
    assert [orjson.loads(b)["path"] for _, _, b in resps] == ["/slow", "/b?x=1&y=%20z", "/c"]
    assert orjson.loads(resps[1][2])["body"] == "abc"
    assert orjson.loads(resps[1][2])["query"] == {"x": "1", "y": " z"}
    assert resps[2][1]["connection"] == "close"
    assert all("date" in h for _, h, _ in resps)


async def test_chunked_request_body_and_100_continue(server) -> None:  # type: ignore[no-untyped-def]
    _, port, _ = server
    req = (
        b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n"
        b"Connection: close\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    raw = await _exchange(port, req)
    assert raw.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
    ((status, _, body),) = _responses(raw[len(b"HTTP/1.1 100 Continue\r\n\r\n") :])
    assert status == 200 and orjson.loads(body)["body"] == "abcde"


async def test_http10_and_head_and_204(server) -> None:  # type: ignore[no-untyped-def]
    _, port, _ = server
    raw = await _exchange(port, b"GET /ten HTTP/1.0\r\n\r\n")
    ((status, headers, body),) = _responses(raw)
    assert status == 200 and headers["connection"] == "close"
    assert orjson.loads(body)["version"] == "1.0"
    raw = await _exchange(port, b"HEAD /h HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert rest == b"" and b"Content-Length:" in head  # no body for HEAD
    raw = await _exchange(port, b"GET /empty HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 204") and b"Content-Length" not in head and rest == b""


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: nope\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000, 413),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"400\r\n"
            + b"y" * 1024
            + b"\r\n"
            + b"400\r\n"
            + b"y" * 1024
            + b"\r\n0\r\n\r\n",
            413,
        ),
    ],
)
async def test_bad_requests_get_json_errors(server, request_bytes: bytes, status: int) -> None:  # type: ignore[no-untyped-def]
    _, port, refused = server
    raw = await _exchange(port, request_bytes)
    ((got, headers, body),) = _responses(raw)
    assert got == status
    assert headers["content-type"] == "application/json" and headers["connection"] == "close"
    assert "error" in orjson.loads(body)
    assert refused == [status]


async def test_handler_exception_is_a_500_and_connection_survives(server) -> None:  # type: ignore[no-untyped-def]
    _, port, _ = server
    raw = await _exchange(
        port,
        b"GET /boom HTTP/1.1\r\nHost: a\r\n\r\n"
        b"GET /ok HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    (s1, _, _), (s2, _, _) = _responses(raw)
    assert (s1, s2) == (500, 200)


async def test_stop_finishes_in_flight_requests(server) -> None:  # type: ignore[no-untyped-def]
    srv, port, _ = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
    await writer.drain()
    await asyncio.sleep(0.05)
    await srv.stop(2.0)
    raw = await asyncio.wait_for(reader.read(), 5)
    ((status, headers, _),) = _responses(raw)
    assert status == 200 and headers["connection"] == "close"  # answered, then closed
    writer.close()


# ---- issue 12: an edge that holds ---------------------------------------------------------------
@contextlib.asynccontextmanager
async def serving(
    handler: Callable[[Request], Awaitable[Response]] = _echo, **limits: Any
) -> AsyncIterator[tuple[HttpServer, int, list[tuple[int, str]]]]:
    """An HttpServer with ``HttpLimits(max_body=1000, **limits)`` on a free port."""
    refused: list[tuple[int, str]] = []
    srv = HttpServer(
        handler,
        limits=HttpLimits(**{"max_body": 1000, **limits}),
        on_refused=lambda status, reason: refused.append((status, reason)),
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    await srv.start(sock)
    try:
        yield srv, sock.getsockname()[1], refused
    finally:
        await srv.stop(1.0)


async def _read_answer(reader: asyncio.StreamReader, timeout: float = 3.0) -> bytes:
    """Everything until the server closes (or half-closes) the connection."""
    return await asyncio.wait_for(reader.read(), timeout)


@pytest.mark.parametrize(
    ("head", "status", "reason"),
    [
        # 70 KiB in one header line (the limit is 64 KiB for the whole head)
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"v" * 70_000 + b"\r\n\r\n", 431,
         "header_too_large"),
        # 101 small headers (the limit is 100)
        (b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(100))
         + b"\r\n", 431, "too_many_headers"),
        # a 9 KiB target (the request line limit is 8 KiB)
        (b"GET /" + b"u" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414, "request_line_too_long"),
    ],
)  # fmt: skip
async def test_item1_head_limits_answer_431_or_414_and_close(
    head: bytes, status: int, reason: str
) -> None:
    calls: list[str] = []

    async def handler(req: Request) -> Response:
        calls.append(req.raw_path)
        return Response(200, b"ok")

    async with serving(handler) as (_, port, refused):
        raw = await _exchange(port, head)
        ((got, headers, body),) = _responses(raw)
        assert got == status and headers["connection"] == "close"
        assert headers["content-type"] == "application/json" and orjson.loads(body)["error"]
        assert refused == [(status, reason)] and calls == []
        # just under the limits is served: an 8000-byte target, a 58 KiB head, 100 headers
        ok = b"GET /" + b"u" * 8000 + b" HTTP/1.1\r\nHost: a\r\nX-Big: " + b"v" * 50_000
        ok += b"\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(97))
        ok += b"Connection: close\r\n\r\n"
        ((got, _, _),) = _responses(await _exchange(port, ok))
        assert got == 200 and len(calls) == 1


async def test_item1_oversized_head_is_refused_before_the_rest_arrives() -> None:
    """The server answers 431 and closes as soon as the head passes 64 KiB: it does not wait
    for (or keep) the rest of an 8 MiB header that is still being sent."""
    async with serving() as (srv, port, refused):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: ")
        for _ in range(5):  # 80 KiB of the value, in 16 KiB writes, then nothing more
            writer.write(b"v" * 16_384)
            await writer.drain()
            await asyncio.sleep(0.01)
        raw = await _read_answer(reader)
        assert raw.startswith(b"HTTP/1.1 431 ")
        assert refused == [(431, "header_too_large")]
        # the parser was fed up to the limit and not a byte more (the connection lingers a
        # moment, discarding input, before it closes)
        (conn,) = srv.connections
        assert conn.head_bytes == 64 * 1024
        writer.close()


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def test_item1_twenty_unfinished_8mib_headers_do_not_grow_memory() -> None:
    """20 clients each send an unfinished 8 MiB header (the probe that grew RSS by 175 MiB):
    each is cut off at the limit, so the server process grows by far less than that."""
    value = b"v" * (8 * 1024 * 1024)
    async with serving() as (_, port, refused):
        loop = asyncio.get_running_loop()

        def send_one() -> bytes:
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: ")
                with contextlib.suppress(OSError):  # the server may close before the end
                    s.sendall(value)
                s.settimeout(5)
                return s.recv(100)

        before = _rss_bytes()
        answers = await asyncio.gather(*(loop.run_in_executor(None, send_one) for _ in range(20)))
        grown = _rss_bytes() - before
    assert all(a.startswith(b"HTTP/1.1 431 ") for a in answers), answers
    assert len(refused) == 20
    assert grown < 40 * 1024 * 1024, f"RSS grew by {grown / 2**20:.0f} MiB"


async def test_item2_header_timeout_answers_408_to_a_dribbling_client() -> None:
    async with serving(header_timeout=0.3) as (_, port, refused):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        t0 = time.monotonic()

        async def dribble() -> None:
            for b in b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: " + b"s" * 100:
                writer.write(bytes([b]))
                await asyncio.sleep(0.05)

        task = asyncio.create_task(dribble())
        raw = await _read_answer(reader)
        task.cancel()
        assert raw.startswith(b"HTTP/1.1 408 ") and b"Connection: close" in raw
        assert 0.25 < time.monotonic() - t0 < 2.0
        assert refused == [(408, "header_timeout")]
        # a connection that sends nothing at all is closed without an answer
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await _read_answer(reader) == b""
        writer.close()


async def test_item2_body_timeout_and_keepalive_idle_timeout() -> None:
    async with serving(body_timeout=0.3, keepalive_timeout=0.4) as (srv, port, refused):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
        raw = await _read_answer(reader)
        assert raw.startswith(b"HTTP/1.1 408 ") and refused == [(408, "body_timeout")]
        # an idle keep-alive connection is closed after the keep-alive timeout
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
        assert head.startswith(b"HTTP/1.1 200 ")
        t0 = time.monotonic()
        rest = await _read_answer(reader)  # the body, then EOF once the idle timeout passes
        assert 0.3 < time.monotonic() - t0 < 2.0 and b"HTTP/1.1" not in rest
        assert not srv.connections


async def test_item2_max_connections_answers_503_beyond_the_cap() -> None:
    async with serving(max_connections=3) as (srv, port, refused):
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        assert await wait_for(lambda: len(srv.connections) == 3)
        reader, _ = await asyncio.open_connection("127.0.0.1", port)
        raw = await _read_answer(reader)
        assert raw.startswith(b"HTTP/1.1 503 ") and refused == [(503, "too_many_connections")]
        assert len(srv.connections) == 3
        held[0][1].close()
        assert await wait_for(lambda: len(srv.connections) == 2)
        ((status, _, _),) = _responses(
            await _exchange(port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        )
        assert status == 200
        for _, w in held[1:]:
            w.close()


async def test_item3_client_that_never_reads_cannot_make_the_server_buffer() -> None:
    """150 pipelined requests for 1 MiB answers from a client that never reads: the server
    stops reading and dispatching once the connection's write buffer is above its high-water
    mark, so it holds a few MiB, not 150; once the client reads, every answer arrives in order."""
    answer = b"a" * (1024 * 1024)
    handled: list[str] = []

    async def big(req: Request) -> Response:
        handled.append(req.raw_path)
        return Response(200, answer)

    async with serving(big) as (srv, port, _):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(b"".join(b"GET /%d HTTP/1.1\r\nHost: a\r\n\r\n" % i for i in range(150)))
        await writer.drain()
        await asyncio.sleep(1.0)
        buffered = sum(c.transport.get_write_buffer_size() for c in srv.connections if c.transport)
        assert len(handled) <= 5, len(handled)
        assert buffered <= 4 * len(answer), buffered
        # the client reads now: all 150 answers, in order
        got = 0
        while got < 150:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 200 ")
            await reader.readexactly(len(answer))
            got += 1
        assert handled == [f"/{i}" for i in range(150)]
        writer.close()


async def test_item4_request_trailers_are_dropped() -> None:
    async with serving() as (_, port, _):
        req = (
            b"POST /t HTTP/1.1\r\nHost: a\r\nX-User-Id: alice\r\nTransfer-Encoding: chunked\r\n"
            b"Connection: close\r\n\r\n3\r\nabc\r\n0\r\nX-User-Id: victim\r\n"
            b"Authorization: Bearer stolen\r\n\r\n"
        )
        received: list[Request] = []

        async def keep(r: Request) -> Response:
            received.append(r)
            return Response(200, b"ok")

    async with serving(keep) as (_, port, _):
        ((status, _, _),) = _responses(await _exchange(port, req))
        assert status == 200
        (r,) = received
        assert r.body == b"abc"
        assert r.headers["x-user-id"] == "alice" and "authorization" not in r.headers
        assert [k for k, _ in r.raw_headers].count(b"X-User-Id") == 1


@pytest.mark.parametrize(
    ("request_line", "status"),
    [
        (b"GET / HTTP/2.0", 505),
        (b"GET / HTTP/1.2", 505),
        (b"GET / HTTP/0.9", 505),
        (b"GET / HTTP/1.1", 200),
        (b"GET / HTTP/1.0", 200),
    ],
)
async def test_item9_versions_other_than_1_0_and_1_1_get_505(
    request_line: bytes, status: int
) -> None:
    async with serving() as (_, port, _):
        raw = await _exchange(port, request_line + b"\r\nHost: a\r\nConnection: close\r\n\r\n")
        ((got, _, _),) = _responses(raw)
        assert got == status


async def test_item9_host_rules_and_absolute_form() -> None:
    async with serving() as (_, port, refused):
        for req, status in (
            (b"GET / HTTP/1.1\r\n\r\n", 400),  # HTTP/1.1 without Host
            (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),  # two
            (b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", 400),
            (b"GET / HTTP/1.0\r\n\r\n", 200),  # HTTP/1.0 may omit it
            (b"GET ftp://h/x HTTP/1.1\r\nHost: a\r\n\r\n", 400),  # not a target we serve
        ):
            ((got, _, _),) = _responses(await _exchange(port, req))
            assert got == status, req
        assert refused == [(400, "bad_host")] * 3 + [(400, "bad_target")]
        raw = await _exchange(
            port,
            b"GET http://model.internal:8501/v1/x?q=1 HTTP/1.1\r\nHost: other\r\n"
            b"Connection: close\r\n\r\n",
        )
        ((got, _, body),) = _responses(raw)
        doc = orjson.loads(body)
        assert got == 200 and doc["path"] == "/v1/x?q=1" and doc["host"] == "model.internal:8501"


async def test_item9_100_continue_only_for_http11_and_only_when_its_turn_comes() -> None:
    async with serving() as (_, port, _):
        body_req = b"Expect: 100-continue\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc"
        raw = await _exchange(port, b"POST /x HTTP/1.0\r\nHost: a\r\n" + body_req)
        assert b"100 Continue" not in raw and raw.startswith(b"HTTP/1.1 200 ")
        raw = await _exchange(port, b"POST /x HTTP/1.1\r\nHost: a\r\n" + body_req)
        assert raw.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 ")
        # pipelined behind a slow request: the 100 comes after the first answer, not before
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
        writer.write(
            b"POST /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n"
            b"Connection: close\r\n\r\n"
        )
        await writer.drain()
        first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
        assert first.startswith(b"HTTP/1.1 200 "), first  # the /slow answer comes first
        n = int(first.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(n)
        assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3) == (
            b"HTTP/1.1 100 Continue\r\n\r\n"
        )
        writer.write(b"abc")
        rest = await _read_answer(reader)
        ((status, _, body),) = _responses(rest)
        assert status == 200 and orjson.loads(body)["body"] == "abc"
        writer.close()


def test_limits_in_the_reference_config_are_the_defaults_and_bad_ones_name_the_key() -> None:
    from router.config import ConfigError, LimitsConfig, load_config, parse_config
    from router.sidecar.server import http_limits

    cfg = load_config(ROOT / "configs" / "router.yaml")
    assert cfg.limits == LimitsConfig()  # the annotated reference shows every default
    lim = http_limits(cfg, reserved=300)
    assert (lim.max_request_line, lim.max_header_bytes, lim.max_headers) == (8192, 65536, 100)
    assert (lim.header_timeout, lim.body_timeout, lim.keepalive_timeout) == (30, 60, 75)
    assert (lim.send_timeout, lim.write_buffer_high, lim.max_body) == (60, 1 << 20, 1 << 20)
    base = {"champion": {"url": "http://a:1", "version": "1"},
            "challenger": {"url": "http://a:2", "version": "2"},
            "experiment": {"name": "e", "salt": "s"}}  # fmt: skip
    for limits, message in (
        ({"max_headers": 0}, "limits.max_headers: Input should be greater than or equal to 1"),
        ({"header_timeout_s": 0}, "limits.header_timeout_s: Input should be greater than 0"),
        ({"max_request_line": 100_000}, "limits: max_request_line may not exceed max_header"),
        ({"max_conections": 5}, "limits.max_conections: unknown key"),
    ):
        with pytest.raises(ConfigError, match=message):
            parse_config({**base, "limits": limits}, "f.yaml")
