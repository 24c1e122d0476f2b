"""Streaming benchmark: server-sent events through the router against the direct call.

* **time to first byte**: ``--ttfb-requests`` sequential streamed requests (the upstream waits
  ``--ttft-ms`` before its first event), the client's time to the first body byte direct and
  through the router, median and p90, and the difference of the medians (target: within 0.5 ms);
* **many streams**: ``--streams`` concurrent streams of ``--events`` events each (``--event-ms``
  apart, ``--event-bytes`` each, like an OpenAI-compatible ``data: {...}`` chunk): the router's
  CPU (utime + stime of its process from /proc) per event passed through (target: at most
  10 µs), and its resident memory over the idle baseline, per stream (bounded by the write
  buffer's high-water mark).

The router runs as ``router serve`` pinned to core 0 with capture on (a throwaway redis-server);
the upstream (a raw asyncio SSE server) and the clients run in this process on core 1.

Usage::

    python benchmarks/stream_overhead.py                  # ~30 s
    python benchmarks/stream_overhead.py --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from router.capture.redisproc import RedisProcess  # noqa: E402
from router.netutil import free_port, wait_port  # noqa: E402


class SSEUpstream:
    """A raw asyncio HTTP/1.1 server answering every request with a chunked event stream."""

    def __init__(self, ttft: float, events: int, gap: float, event_bytes: int) -> None:
        self.ttft, self.events, self.gap = ttft, events, gap
        pad = max(0, event_bytes - 60)
        self.event = (
            b'data: {"choices":[{"index":0,"delta":{"content":"tok' + b"x" * pad + b'"}}]}\n\n'
        )
        self.port = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        chunk = b"%x\r\n%s\r\n" % (len(self.event), self.event)
        sock = writer.get_extra_info("socket")
        if sock is not None:  # as model servers do: no Nagle delay on a streamed event
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                n = 0
                for line in head.split(b"\r\n"):
                    k, _, v = line.partition(b":")
                    if k.strip().lower() == b"content-length":
                        n = int(v)
                await reader.readexactly(n)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n")  # fmt: skip
                await asyncio.sleep(self.ttft)
                for i in range(self.events):
                    if i and self.gap:
                        await asyncio.sleep(self.gap)
                    if i == 0:  # the first event says when it was written (CLOCK_MONOTONIC)
                        ev = b'data: {"sent": %r}\n\n' % time.perf_counter()
                        writer.write(b"%x\r\n%s\r\n" % (len(ev), ev))
                        continue
                    writer.write(chunk)
                    await writer.drain()
                writer.write(b"0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


REQUEST = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: b\r\nX-User-Id: u%d\r\n"
           b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")  # fmt: skip


async def one_stream(port: int, uid: int) -> tuple[float, float, int, float]:
    """(seconds to the first body byte, seconds to the end, body bytes incl. chunk framing,
    seconds from the upstream's write of the first event to its arrival here)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    t0 = time.perf_counter()
    writer.write(REQUEST % uid)
    await reader.readuntil(b"\r\n\r\n")
    first = 0.0
    transit = float("nan")
    size = 0
    tail = b""
    while True:
        data = await reader.read(65536)
        if not data:
            break
        if not first:
            now = time.perf_counter()
            first = now - t0
            at = data.find(b'"sent": ')
            if at != -1:
                transit = now - float(data[at + 8 : data.index(b"}", at)])
        size += len(data)
        tail = (tail + data)[-7:]
        if tail.endswith(b"0\r\n\r\n"):
            break
    writer.close()
    return first, time.perf_counter() - t0, size, transit


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def router_config(tmp: Path, port: int, upstream: int, redis_url: str) -> Path:
    url = f"http://127.0.0.1:{upstream}"
    cfg = {
        "listen": f"127.0.0.1:{port}",
        "champion": {"url": url, "version": "a", "timeout": 30, "pool_size": 256},
        "challenger": {"url": url, "version": "b", "timeout": 30, "pool_size": 256},
        "experiment": {"name": "bench", "salt": "s", "split": 0.0, "mirror": 0.0,
                       "prediction_kind": "text", "prediction_format": "openai",
                       "prediction_path": None},
        "capture": {"redis": redis_url, "data_dir": str(tmp / "data")},
        "limits": {"max_connections": 4096},
        "guard": {"enabled": False},
    }  # fmt: skip
    path = tmp / "router.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


async def measure(args: argparse.Namespace, router_port: int, router_pid: int,
                  up_ttfb: SSEUpstream, many_router_port: int) -> dict[str, Any]:  # fmt: skip
    out: dict[str, Any] = {}
    # time to first byte: interleaved, one at a time
    direct, routed = [], []
    for i in range(args.ttfb_requests):
        direct.append(await one_stream(up_ttfb.port, i))
        routed.append(await one_stream(router_port, i))
    d50, r50 = statistics.median(x[0] for x in direct), statistics.median(x[0] for x in routed)
    dt50, rt50 = statistics.median(x[3] for x in direct), statistics.median(x[3] for x in routed)
    q = lambda xs: statistics.quantiles([x[0] for x in xs], n=10)[-1]  # noqa: E731
    out["ttfb"] = {"requests": args.ttfb_requests, "upstream_ttft_ms": args.ttft_ms,
                   "direct_p50_ms": d50 * 1e3, "router_p50_ms": r50 * 1e3,
                   "direct_p90_ms": q(direct) * 1e3, "router_p90_ms": q(routed) * 1e3,
                   "added_p50_ms": (r50 - d50) * 1e3,
                   "first_event_transit_direct_p50_ms": dt50 * 1e3,
                   "first_event_transit_router_p50_ms": rt50 * 1e3}  # fmt: skip
    # the same with the router in this process: what the router itself adds, without waiting
    # for a CPU to schedule a second process (this machine is shared; see README)
    from router.config import parse_config
    from router.sidecar.server import RunningRouter

    tmp = Path(tempfile.mkdtemp(prefix="stream-bench-inproc-"))
    cfg = yaml.safe_load(router_config(tmp, 0, up_ttfb.port, "redis://unused").read_text())
    cfg["capture"] = {"enabled": False}
    inproc = RunningRouter(parse_config(cfg, "bench"), tmp / "run", None)
    port = await inproc.start()
    try:
        direct, routed = [], []
        for i in range(args.ttfb_requests):
            direct.append(await one_stream(up_ttfb.port, i))
            routed.append(await one_stream(port, i))
    finally:
        await inproc.stop()
    d50, r50 = statistics.median(x[0] for x in direct), statistics.median(x[0] for x in routed)
    dt50, rt50 = statistics.median(x[3] for x in direct), statistics.median(x[3] for x in routed)
    out["ttfb_in_process"] = {"direct_p50_ms": d50 * 1e3, "router_p50_ms": r50 * 1e3,
                              "added_p50_ms": (r50 - d50) * 1e3,
                              "first_event_transit_direct_p50_ms": dt50 * 1e3,
                              "first_event_transit_router_p50_ms": rt50 * 1e3}  # fmt: skip
    # many concurrent streams
    await asyncio.gather(*(one_stream(many_router_port, i) for i in range(4)))  # warm up
    await asyncio.sleep(0.5)
    rss0 = rss_bytes(router_pid)
    user0, sys0 = cpu_times(router_pid)
    peak = rss0
    done = False

    async def sample() -> None:
        nonlocal peak
        while not done:
            peak = max(peak, rss_bytes(router_pid))
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample())
    t0 = time.perf_counter()
    res = await asyncio.gather(*(one_stream(many_router_port, i) for i in range(args.streams)))
    wall = time.perf_counter() - t0
    done = True
    await sampler
    await asyncio.sleep(0.5)  # capture of the last records
    user1, sys1 = cpu_times(router_pid)
    cpu = user1 + sys1 - user0 - sys0
    events = args.streams * args.events
    out["streams"] = {"streams": args.streams, "events_per_stream": args.events,
                      "event_ms": args.event_ms, "event_bytes": args.event_bytes,
                      "wall_s": wall, "router_cpu_s": cpu,
                      "router_cpu_us_per_event": cpu / events * 1e6,
                      "router_user_us_per_event": (user1 - user0) / events * 1e6,
                      "router_system_us_per_event": (sys1 - sys0) / events * 1e6,
                      "router_rss_over_idle_per_stream_kib": (peak - rss0) / args.streams / 1024,
                      "complete": sum(1 for r in res if r[2] > 0)}  # fmt: skip
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ttfb-requests", type=int, default=60)
    ap.add_argument("--ttft-ms", type=float, default=20.0)
    ap.add_argument("--streams", type=int, default=100)
    ap.add_argument("--events", type=int, default=500)
    ap.add_argument("--event-ms", type=float, default=5.0)
    ap.add_argument("--event-bytes", type=int, default=120)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--no-pin", dest="pin", action="store_false",
                    help="do not pin the router to core 0 (and this process to core 1)")
    args = ap.parse_args()
    if args.pin:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {1})
    tmp = Path(tempfile.mkdtemp(prefix="stream-bench-"))
    redis = RedisProcess(tmp / "redis", appendonly=False, prefer_path=True).start()
    procs: list[subprocess.Popen[bytes]] = []

    async def run() -> dict[str, Any]:
        up_ttfb = SSEUpstream(args.ttft_ms / 1e3, 20, 0.0, args.event_bytes)
        up_many = SSEUpstream(0.0, args.events, args.event_ms / 1e3, args.event_bytes)
        await up_ttfb.start()
        await up_many.start()
        p1, p2 = free_port(), free_port()
        for port, up, name in ((p1, up_ttfb, "a"), (p2, up_many, "b")):
            (tmp / name).mkdir()
            cfg = router_config(tmp / name, port, up.port, redis.url)
            cmd = [sys.executable, "-m", "router", "serve", "-c", str(cfg), "--log-level",
                   "WARNING"]
            if args.pin:
                cmd = ["taskset", "-c", "0", *cmd]
            procs.append(subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL))
        for port in (p1, p2):
            await asyncio.to_thread(wait_port, port)
        try:
            return await measure(args, p1, procs[1].pid, up_ttfb, p2)
        finally:
            for p in procs:
                p.terminate()
            await up_ttfb.stop()
            await up_many.stop()

    try:
        out = asyncio.run(run())
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        redis.stop()
    t, s = out["ttfb"], out["streams"]
    print(f"time to first byte ({t['requests']} requests, upstream first event after "
          f"{t['upstream_ttft_ms']:.0f} ms): direct p50 {t['direct_p50_ms']:.2f} ms, router p50 "
          f"{t['router_p50_ms']:.2f} ms (+{t['added_p50_ms']:.2f} ms); p90 "
          f"{t['direct_p90_ms']:.2f} / {t['router_p90_ms']:.2f} ms; the first event's transit "
          f"from the upstream's write: direct {t['first_event_transit_direct_p50_ms']:.3f} ms, "
          f"router {t['first_event_transit_router_p50_ms']:.3f} ms")  # fmt: skip
    ti = out["ttfb_in_process"]
    print(f"  router in this process: direct p50 {ti['direct_p50_ms']:.2f} ms, router p50 "
          f"{ti['router_p50_ms']:.2f} ms (+{ti['added_p50_ms']:.2f} ms); transit direct "
          f"{ti['first_event_transit_direct_p50_ms']:.3f} ms, router "
          f"{ti['first_event_transit_router_p50_ms']:.3f} ms")  # fmt: skip
    print(f"{s['streams']} streams x {s['events_per_stream']} events ({s['event_bytes']} B, "
          f"{s['event_ms']:.0f} ms apart): router CPU {s['router_cpu_us_per_event']:.2f} µs/event "
          f"(user {s['router_user_us_per_event']:.2f}, system "
          f"{s['router_system_us_per_event']:.2f}), "
          f"RSS +{s['router_rss_over_idle_per_stream_kib']:.0f} KiB/stream, "
          f"{s['complete']}/{s['streams']} complete in {s['wall_s']:.1f} s")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
