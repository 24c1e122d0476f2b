"""Client-side cost of one upstream exchange: ``UpstreamPool`` vs ``aiohttp.ClientSession``.

Starts a stub upstream (uvloop + httptools, a few µs per answer; this file with ``--serve``) in
a separate process, then, on uvloop in this process, runs ``--requests`` POSTs at
``--concurrency`` for each client and reports CPU µs per request (``time.process_time()`` of
this process only, user + system) and req/s. With two or more CPUs the client and the stub are
pinned to different CPUs.

    python benchmarks/upstream_client.py [--requests 40000] [--concurrency 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import httptools
import uvloop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from router.sidecar.upstream import UpstreamPool  # noqa: E402

BODY = b'{"user": {"id": "u-123"}, "features": [0.1, 0.2, 0.3, 0.4]}'
HEADERS = [
    (b"Host", b"bench"),
    (b"Content-Type", b"application/json"),
    (b"X-User-Id", b"u-123"),
    (b"X-Request-Id", b"0123456789abcdef"),
]
Call = Callable[[], Awaitable[bytes]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


RESPONSE_BODY = b'{"score": 0.4231, "label": 0, "model": "stub"}'
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
    len(RESPONSE_BODY),
    RESPONSE_BODY,
)


class StubProtocol(asyncio.Protocol):
    """Near-free upstream: httptools request parser, canned answer per request."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop: not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()

    def on_message_complete(self) -> None:
        if self.transport is not None:
            self.transport.write(RESPONSE)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(StubProtocol, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


def start_stub(port: int, cpu: int | None) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port)])
    if cpu is not None:
        os.sched_setaffinity(proc.pid, {cpu})
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("stub upstream did not start")


Round = tuple[float, float, float]  # (process_time seconds, of which kernel seconds, wall seconds)


async def drive(call: Call, total: int, concurrency: int) -> Round:
    """Run ``total`` calls on ``concurrency`` workers."""
    left = total

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            body = await call()
            if not body:
                raise RuntimeError("empty answer")

    sys0 = resource.getrusage(resource.RUSAGE_SELF).ru_stime
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return cpu, resource.getrusage(resource.RUSAGE_SELF).ru_stime - sys0, wall


async def bench_pool(port: int, n: int, conc: int, rounds: int) -> list[Round]:
    pool = UpstreamPool("127.0.0.1", port, pool_size=conc, timeout=10.0)

    async def call() -> bytes:
        r = await pool.request(b"POST", b"/predict?v=1", HEADERS, BODY)
        if r.status != 200:
            raise RuntimeError(f"status {r.status}")
        return r.body

    await drive(call, max(2000, n // 10), conc)  # warm-up: connections, caches
    out = [await drive(call, n, conc) for _ in range(rounds)]
    await pool.close()
    return out


async def bench_aiohttp(port: int, n: int, conc: int, rounds: int) -> list[Round]:
    url = f"http://127.0.0.1:{port}/predict?v=1"
    headers = {k.decode(): v.decode() for k, v in HEADERS if k != b"Host"}
    connector = aiohttp.TCPConnector(limit=conc)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def call() -> bytes:
            async with session.post(url, data=BODY, headers=headers) as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"status {resp.status}")
                return body

        await drive(call, max(2000, n // 10), conc)
        return [await drive(call, n, conc) for _ in range(rounds)]


def report(name: str, n: int, results: list[Round]) -> tuple[float, float]:
    cpu_us = statistics.median(cpu / n * 1e6 for cpu, _, _ in results)
    sys_us = statistics.median(ks / n * 1e6 for _, ks, _ in results)
    rps = statistics.median(n / wall for _, _, wall in results)
    best = min(cpu for cpu, _, _ in results) / n * 1e6
    rounds = ", ".join(f"{cpu / n * 1e6:.1f}" for cpu, _, _ in results)
    print(
        f"{name:<22} {cpu_us:7.1f} µs CPU/req (kernel {sys_us:.1f}, best {best:.1f})"
        f"  {rps:8.0f} req/s   rounds µs: {rounds}"
    )
    return cpu_us, rps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=40000, help="requests per round")
    ap.add_argument("--aiohttp-requests", type=int, default=0, help="default: --requests / 4")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip-aiohttp", action="store_true")
    ap.add_argument("--serve", type=int, metavar="PORT", help="internal: run the stub upstream")
    args = ap.parse_args()
    if args.serve:
        uvloop.run(serve(args.serve))
        return

    cpus = sorted(os.sched_getaffinity(0))
    client_cpu, stub_cpu = (cpus[0], cpus[1]) if len(cpus) >= 2 else (None, None)
    port = free_port()
    stub = start_stub(port, stub_cpu)
    try:
        if client_cpu is not None:
            os.sched_setaffinity(0, {client_cpu})
        print(
            f"python {sys.version.split()[0]}, uvloop {uvloop.__version__}, aiohttp "
            f"{aiohttp.__version__}; concurrency {args.concurrency}; client cpu {client_cpu}, "
            f"stub cpu {stub_cpu}; median of {args.rounds} rounds"
        )
        n = args.requests
        pool_cpu, pool_rps = report(
            "UpstreamPool", n, uvloop.run(bench_pool(port, n, args.concurrency, args.rounds))
        )
        if not args.skip_aiohttp:
            na = args.aiohttp_requests or max(2000, n // 4)
            aio_cpu, aio_rps = report(
                "aiohttp.ClientSession",
                na,
                uvloop.run(bench_aiohttp(port, na, args.concurrency, args.rounds)),
            )
            print(f"ratio: {aio_cpu / pool_cpu:.1f}x less CPU, {pool_rps / aio_rps:.1f}x req/s")
    finally:
        stub.terminate()
        stub.wait(5)


if __name__ == "__main__":
    main()
