"""Capture throughput: records/s one process sustains through CaptureWriter, and spool rates.

    python benchmarks/capture_throughput.py [--records 200000] [--batch-size 500]

Starts its own throwaway redis-server (never the machine's :6379) and measures:

1. writer → Redis: records finalized (JSON parse of both answers, prediction extraction,
   contract diff for mirrored pairs), encoded and written through the de-duplicating batch
   script, end to end, from a full queue;
2. the cost of the exactly-once script: the same payloads with plain pipelined ``XADD`` vs the
   Lua batch script;
3. writer → spool (Redis down): records/s appended to the local spool (fsync=batch);
4. spool → Redis replay: records/s replayed once Redis is back.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import orjson
import redis.asyncio as aioredis

from router.capture.batches import WRITE_BATCH_LUA
from router.capture.keys import writer_mark_key
from router.capture.records import FinalizeOptions, PendingRecord, Side
from router.capture.redisproc import RedisProcess
from router.capture.writer import CaptureWriter
from router.config import CaptureConfig
from router.metrics import Metrics
from router.netutil import free_port


def make_records(n: int) -> list[PendingRecord]:
    out = []
    for i in range(n):
        mirrored = i % 2 == 0
        out.append(PendingRecord(
            experiment="bench", request_id=f"{i:016x}", ts=time.time(), unit=f"user-{i % 5000}",
            bucket=i % 10000, served="champion", mirrored=mirrored,
            segment={"country": "de"},
            champion=Side("champion-v1", 200, 3.25, b'{"score": 0.734, "model": "v1"}'),
            challenger=Side("challenger-v2", 200, 4.5, b'{"score": 0.711, "model": "v2"}')
            if mirrored else None,
        ))  # fmt: skip
    return out


def cfg_for(url: str, data: Path, batch_size: int) -> CaptureConfig:
    return CaptureConfig(redis=url, data_dir=str(data), batch_size=batch_size,
                         batch_interval_ms=5, spool_max_bytes=4 << 30)  # fmt: skip


async def drain(writer: CaptureWriter, metrics: Metrics, counter: str, n: int) -> float:
    t0 = time.perf_counter()
    while metrics.counter_value(counter) < n:
        await asyncio.sleep(0.002)
    return time.perf_counter() - t0


async def bench(n: int, batch_size: int) -> dict[str, float]:
    out: dict[str, float] = {"records": n, "batch_size": batch_size}
    tmp = Path(tempfile.mkdtemp(prefix="capture-bench-"))
    server = RedisProcess(tmp / "redis", prefer_path=True, appendonly=True).start()
    url = server.url
    print(f"redis-server {server.binary} at {url} (appendonly yes, appendfsync everysec)")
    print(f"{n} records, batch_size {batch_size}, cpu {os.cpu_count()}, "
          f"python {sys.version.split()[0]}")
    recs = make_records(n)
    try:
        # 1. writer → Redis
        m = Metrics()
        w = CaptureWriter(cfg_for(url, tmp / "a", batch_size), url, m, FinalizeOptions(), n + 1)
        await w.start()
        for r in recs:
            w.submit_record(r)
        took = await drain(w, m, "router_capture_written", n)
        await w.stop()
        print(f"writer -> Redis        : {n / took:>10,.0f} records/s  ({took:.2f} s)")
        out["writer_to_redis_records_per_s"] = n / took

        # 2. plain XADD vs the exactly-once script, same payloads, same batch size
        client = aioredis.Redis.from_url(url)
        payloads = [orjson.dumps({"request_id": f"{i:016x}", "x": "y" * 300}) for i in range(n)]
        await client.delete("p:pairs", "s:pairs")
        t0 = time.perf_counter()
        for i in range(0, n, batch_size):
            async with client.pipeline(transaction=False) as pipe:
                for p in payloads[i : i + batch_size]:
                    pipe.xadd("p:pairs", {"r": p}, maxlen=1_000_000, approximate=True)
                await pipe.execute()
        plain = time.perf_counter() - t0
        script = client.register_script(WRITE_BATCH_LUA)
        t0 = time.perf_counter()
        for seq, i in enumerate(range(0, n, batch_size), start=1):
            await script(["s:pairs", writer_mark_key("s:pairs", "bench")],
                         [86400, 1_000_000, "", seq, *payloads[i : i + batch_size]])  # fmt: skip
        lua = time.perf_counter() - t0
        await client.aclose()
        print(f"pipelined XADD         : {n / plain:>10,.0f} records/s")
        print(f"Lua batch (exactly once): {n / lua:>9,.0f} records/s")
        out["pipelined_xadd_records_per_s"] = n / plain
        out["lua_exactly_once_records_per_s"] = n / lua

        # 3. writer → spool while Redis is down
        dead = f"redis://127.0.0.1:{free_port()}/0"
        m = Metrics()
        cfg = cfg_for(dead, tmp / "b", batch_size)
        w = CaptureWriter(cfg, dead, m, FinalizeOptions(), n + 1)
        await w.start()
        for r in recs:
            w.submit_record(r)
        took = await drain(w, m, "router_capture_spooled", n)
        spool_bytes = w.spool.bytes if w.spool else 0
        await w.stop(timeout=1)
        print(f"writer -> spool        : {n / took:>10,.0f} records/s  ({took:.2f} s, "
              f"{spool_bytes / took / 1e6:.0f} MB/s, fsync=batch)")
        out["writer_to_spool_records_per_s"] = n / took

        # 4. spool → Redis replay
        client = aioredis.Redis.from_url(url)
        await client.delete("bench:pairs")
        await client.aclose()
        m = Metrics()
        w = CaptureWriter(cfg_for(url, tmp / "b", batch_size), url, m, FinalizeOptions(), n + 1)
        t0 = time.perf_counter()
        await w.start()
        await drain(w, m, "router_capture_replayed", n)
        took = time.perf_counter() - t0
        await w.stop()
        print(f"spool -> Redis replay  : {n / took:>10,.0f} records/s  ({took:.2f} s)")
        out["spool_replay_records_per_s"] = n / took
    finally:
        server.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--json", type=Path, help="write the figures here")
    a = ap.parse_args()
    print("command: python benchmarks/capture_throughput.py " + " ".join(sys.argv[1:]))
    out = asyncio.run(bench(a.records, a.batch_size))
    if a.json:
        a.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
