"""Issue 20, item 5: the exactly-once markers cost Redis memory independent of the traffic rate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import redis

from router.capture.records import FinalizeOptions
from router.capture.writer import CaptureWriter
from router.config import CaptureConfig
from router.metrics import Metrics
from tests.helpers import wait_for


def _row(i: int, exp: str = "t") -> dict[str, Any]:
    return {"v": 1, "experiment": exp, "request_id": f"r{i:05d}", "unit": None,
            "metric": "click", "value": 1.0, "ts": 1700000000.0 + i}  # fmt: skip


def _marker_keys(c: redis.Redis) -> list[bytes]:
    """Every key that is not a stream: what exactly-once costs besides the records."""
    return [k for k in c.scan_iter(count=1000) if c.type(k) != b"stream"]


async def _write_batches(url: str, tmp: Path, batches: int, start: int = 0) -> Metrics:
    # batch_size 1: every record is its own batch, the worst case (a batch holds ~22 records
    # at 400 req/s with the default 50 ms interval)
    cfg = CaptureConfig(redis=url, data_dir=str(tmp), batch_size=1, batch_interval_ms=1)
    m = Metrics()
    w = CaptureWriter(cfg, url, m, FinalizeOptions(), 100_000)
    await w.start()
    for i in range(start, start + batches):
        w.submit_outcome(_row(i))
    ok = await wait_for(lambda: m.counter_value("router_capture_written") >= batches, timeout=20)
    await w.stop()
    assert ok and m.counter_value("router_capture_spooled") == 0
    return m


async def test_item5_marker_keys_do_not_grow_with_the_number_of_batches(
    tmp_path: Path, redis_url: str
) -> None:
    c = redis.Redis.from_url(redis_url)
    try:
        await _write_batches(redis_url, tmp_path / "a", 50)
        after_50 = _marker_keys(c)
        await _write_batches(redis_url, tmp_path / "b", 600, start=50)
        after_650 = _marker_keys(c)
        assert c.xlen("t:outcomes") == 650
        # one small key per (stream, writer process), whatever the number of batches
        assert len(after_50) <= 1, after_50[:5]
        assert len(after_650) <= 2, after_650[:5]  # two writer processes so far
        used = sum(int(c.memory_usage(k) or 0) for k in after_650)
        assert used < 1024, used  # bytes, for 650 batches (was ~100 bytes per batch)
    finally:
        c.close()


async def test_a_spool_left_by_the_per_batch_marker_design_replays_exactly_once(
    tmp_path: Path, redis_url: str
) -> None:
    """Upgrade: batch 5 reached Redis under the earlier design (its per-batch marker key is set)
    and is also in the spool (its write timed out after success); batch 6 is only spooled."""
    import orjson

    from router.capture.keys import batch_marker_key
    from router.capture.spool import Spool

    key = "t:outcomes"
    rows = [orjson.dumps(_row(i)) for i in range(3)]
    spool = Spool(tmp_path / "spool", 1 << 20)
    spool.open()
    spool.append(key, "1f.0badcafe.5", rows[:2])
    spool.append(key, "1f.0badcafe.6", rows[2:])
    spool.close()
    c = redis.Redis.from_url(redis_url)
    try:
        c.set(batch_marker_key(key, "1f.0badcafe.5"), "1", ex=86400)
        for r in rows[:2]:
            c.xadd(key, {"r": r})
        spool_dir = str(tmp_path / "spool")
        cfg = CaptureConfig(redis=redis_url, data_dir=str(tmp_path), spool_dir=spool_dir)
        m = Metrics()
        w = CaptureWriter(cfg, redis_url, m, FinalizeOptions(), 100)
        await w.start()
        assert await wait_for(lambda: w.spool is not None and not w.spool.pending, timeout=10)
        await w.stop()
        ids = [orjson.loads(f[b"r"])["request_id"] for _i, f in c.xrange(key)]
        assert ids == ["r00000", "r00001", "r00002"]
        assert m.counter_value("router_capture_replay_duplicates") == 2
        assert m.counter_value("router_capture_replayed") == 1
    finally:
        c.close()
