"""CPU cost of the sidecar's HTTP/1.1 server per request, optionally A/B against another checkout.

Two in-process measurements on uvloop (stable on a shared machine, unlike end-to-end runs):

* ``parse``: ``HttpProtocol.data_received`` for one whole keep-alive POST (the head accounting,
  the llhttp callbacks, the limit / Host / version checks, the Request), dispatch left out;
* ``exchange``: 32 keep-alive connections from an in-process client to a real ``HttpServer``
  whose handler answers at once (client CPU included, the same for both sides).

    python benchmarks/http_edge.py                          # this checkout
    python benchmarks/http_edge.py --baseline /path/to/other/checkout   # interleaved A/B

Each figure is the median over ``--rounds`` interleaved rounds, in µs per request.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import socket
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import uvloop

ROOT = Path(__file__).resolve().parents[1]
BODY = b'{"user": {"id": "u"}, "features": [0.1, 0.2, 0.3, 0.4]}'
REQ = (
    b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Type: application/json\r\n"
    b"X-User-Id: user-123\r\nContent-Length: %d\r\n\r\n" % len(BODY)
) + BODY


def _router_modules() -> dict[str, ModuleType]:
    return {k: m for k, m in sys.modules.items() if k == "router" or k.startswith("router.")}


def load(checkout: Path) -> SimpleNamespace:
    """``HttpProtocol``, ``HttpServer`` and ``Response`` of one checkout's ``router`` package,
    imported in isolation (its modules leave ``sys.modules`` again, so another checkout's can be
    loaded beside them). Knows both layouts: ``router/httpserver.py`` before the sidecar package,
    ``router/sidecar/httpserver.py`` (with ``http_messages.py``) after."""
    saved = _router_modules()
    for name in saved:
        del sys.modules[name]
    sys.path.insert(0, str(checkout))
    try:
        flat = (checkout / "router" / "httpserver.py").exists()
        name = "router.httpserver" if flat else "router.sidecar.httpserver"
        server = importlib.import_module(name)
        response = getattr(server, "Response", None)
        if response is None:
            response = importlib.import_module("router.sidecar.http_messages").Response
        return SimpleNamespace(HttpProtocol=server.HttpProtocol, HttpServer=server.HttpServer,
                               Response=response)  # fmt: skip
    finally:
        sys.path.remove(str(checkout))
        for name in _router_modules():
            del sys.modules[name]
        sys.modules.update(saved)


class _Transport:
    """Just enough of a transport for ``parse`` (no I/O happens there)."""

    def write(self, data: bytes) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _ok(mod: Any) -> Any:
    return mod.Response(200, b'{"score": 0.5}', [(b"Content-Type", b"application/json")])


def parse_cost(mod: Any, n: int) -> float:
    async def handler(req: Any) -> Any:
        return await _ok(mod)

    class NoDispatch(mod.HttpProtocol):  # type: ignore[name-defined,misc]
        __slots__ = ()

        def _next(self) -> None:
            pass

    srv = mod.HttpServer(handler, max_body=1 << 20)
    proto = NoDispatch(srv)
    proto.connection_made(_Transport())
    pending = proto._pending
    proto.data_received(REQ)
    assert len(pending) == 1, "the request did not parse"
    pending.clear()
    t0 = time.process_time()
    for _ in range(n):
        proto.data_received(REQ)
        pending.clear()
    return (time.process_time() - t0) / n * 1e6


class _Client(asyncio.Protocol):
    def __init__(self, n: int, done: asyncio.Future[None]) -> None:
        self.n, self.done, self.buf = n, done, b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(REQ)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            at = self.buf.find(b"Content-Length: ")
            length = int(self.buf[at + 16 : self.buf.index(b"\r\n", at)])
            if len(self.buf) < end + 4 + length:
                return
            self.buf = self.buf[end + 4 + length :]
            self.n -= 1
            assert self.transport is not None
            if self.n == 0:
                self.transport.close()
                self.done.set_result(None)
                return
            self.transport.write(REQ)


async def exchange_cost(mod: Any, n: int, conns: int = 32) -> float:
    async def handler(req: Any) -> Any:
        return await _ok(mod)

    srv = mod.HttpServer(handler, max_body=1 << 20)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    await srv.start(sock)
    port = sock.getsockname()[1]
    loop = asyncio.get_running_loop()

    async def batch(per_conn: int) -> None:
        waits = []
        for _ in range(conns):
            done: asyncio.Future[None] = loop.create_future()
            waits.append(done)
            await loop.create_connection(lambda d=done: _Client(per_conn, d), "127.0.0.1", port)
        await asyncio.gather(*waits)

    await batch(200)  # warm up
    t0 = time.process_time()
    await batch(n // conns)
    used = time.process_time() - t0
    await srv.stop(1.0)
    return used / (n // conns * conns) * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--baseline", type=Path, help="another checkout to compare against")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--parse-requests", type=int, default=100_000)
    ap.add_argument("--exchange-requests", type=int, default=30_000)
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})
    sides = {"this": load(ROOT)}
    if args.baseline:
        sides = {"baseline": load(args.baseline), **sides}
    results: dict[str, dict[str, list[float]]] = {s: {"parse": [], "exchange": []} for s in sides}

    async def run() -> None:
        for _ in range(args.rounds):
            for name, mod in sides.items():
                results[name]["parse"].append(parse_cost(mod, args.parse_requests))
                results[name]["exchange"].append(await exchange_cost(mod, args.exchange_requests))

    uvloop.run(run())
    for name, r in results.items():
        print(f"{name:9s} parse {statistics.median(r['parse']):6.2f} µs/req   "
              f"exchange {statistics.median(r['exchange']):6.2f} µs/req")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
