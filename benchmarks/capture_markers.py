"""Redis memory of the capture writer's exactly-once markers, per batch and per day.

    python benchmarks/capture_markers.py [--batches 40000] [--batch-records 22] [--rate 400]

Starts its own throwaway redis-server (never the machine's :6379), runs the real
``CaptureWriter`` over ``batches`` full batches of ``batch-records`` outcome rows (22 is what a
batch holds at 400 req/s with the default 50 ms ``batch_interval_ms``), then measures Redis'
``used_memory`` after deleting the streams, and again after deleting the markers too: the
difference is what the markers cost. From that: bytes per marker key and the cost of a day of
traffic at ``rate`` requests/s while markers live ``dedupe_ttl_s`` (default one day). The
streams are capped (``stream_maxlen`` 1000): markers do not depend on it.

The script only uses the writer's public API, so it measures whichever ``router`` package it
imports: run it with ``PYTHONPATH=<other checkout>`` to measure another version, e.g. before
and after a change.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

import router.capture.writer
from router.capture.records import FinalizeOptions
from router.capture.redisproc import RedisProcess
from router.capture.writer import CaptureWriter
from router.config import CaptureConfig
from router.metrics import Metrics


def used_memory(c: redis.Redis) -> int:
    return int(c.info("memory")["used_memory"])


async def run(batches: int, per_batch: int, rate: float) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="capture-markers-"))
    server = RedisProcess(tmp / "redis", prefer_path=True, appendonly=False).start()
    url = server.url
    c = redis.Redis.from_url(url)
    out: dict[str, Any] = {"router_module": router.capture.writer.__file__, "batches": batches,
                           "batch_records": per_batch, "rate": rate}  # fmt: skip
    try:
        cfg = CaptureConfig(redis=url, data_dir=str(tmp / "data"), batch_size=per_batch,
                            batch_interval_ms=1, stream_maxlen=1000)  # fmt: skip
        m = Metrics()
        n = batches * per_batch
        w = CaptureWriter(cfg, url, m, FinalizeOptions(), n + 1)
        await w.start()
        t0 = time.perf_counter()
        for i in range(n):
            w.submit_outcome({"v": 1, "experiment": "bench", "request_id": f"{i:016x}",
                              "unit": None, "metric": "m", "value": 1.0, "ts": 1.0})  # fmt: skip
        while m.counter_value("router_capture_written") < n:
            await asyncio.sleep(0.01)
        took = time.perf_counter() - t0
        await w.stop()
        everything = used_memory(c)
        keys = [k for k in c.scan_iter(count=10_000)]
        streams = [k for k in keys if c.type(k) == b"stream"]
        c.delete(*streams)
        markers_only = used_memory(c)
        markers = [k for k in keys if k not in set(streams)]
        for i in range(0, len(markers), 10_000):
            c.delete(*markers[i : i + 10_000])
        nothing = used_memory(c)
        marker_keys = len(markers)
        marker_bytes = markers_only - nothing  # what deleting the markers freed
        per_key = marker_bytes / marker_keys if marker_keys else 0.0
        batches_per_day = rate * 86_400 / per_batch
        # per-batch markers: one per batch for dedupe_ttl_s; per-writer marks: what was measured
        per_batch_design = marker_keys >= batches
        day_keys = batches_per_day * cfg.dedupe_ttl_s / 86_400 if per_batch_design else marker_keys
        out.update({
            "seconds": took, "records_per_s": n / took, "marker_keys": marker_keys,
            "marker_bytes": marker_bytes, "bytes_per_marker_key": per_key,
            "stream_bytes": everything - markers_only,
            "keys_per_day_at_rate": day_keys,
            "marker_bytes_per_day_at_rate": day_keys * per_key if per_batch_design
            else marker_bytes,
        })  # fmt: skip
    finally:
        c.close()
        server.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=40_000)
    ap.add_argument("--batch-records", type=int, default=22)
    ap.add_argument("--rate", type=float, default=400.0, help="requests/s per worker")
    ap.add_argument("--json", type=Path, help="write the figures here")
    a = ap.parse_args()
    print("command: python benchmarks/capture_markers.py " + " ".join(sys.argv[1:]))
    out = asyncio.run(run(a.batches, a.batch_records, a.rate))
    print(f"router package: {out['router_module']}")
    print(f"{a.batches} batches of {a.batch_records} records in {out['seconds']:.1f} s "
          f"({out['records_per_s']:,.0f} records/s)")
    print(f"marker keys: {out['marker_keys']}, {out['marker_bytes']:,} bytes "
          f"({out['bytes_per_marker_key']:.0f} bytes/key); streams {out['stream_bytes']:,} bytes")
    print(f"at {a.rate:g} req/s for a day: {out['keys_per_day_at_rate']:,.0f} marker keys, "
          f"{out['marker_bytes_per_day_at_rate']:,.0f} bytes of Redis memory per worker")
    if a.json:
        a.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
