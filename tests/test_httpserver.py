"""The hot-path HTTP/1.1 server against raw sockets: framing, pipelining, limits, errors."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import orjson
import pytest

from router.httpserver import HttpServer, Request, Response


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
    srv = HttpServer(_echo, max_body=1000, on_refused=refused.append)
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
