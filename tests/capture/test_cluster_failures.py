"""Issue 20, items 2 and 4: capture through a whole Redis Cluster outage and a master failover.

Real clusters (:class:`router.capture.redisproc.LocalCluster`: redis-server processes on free
loopback ports), a real router or the real capture writer, real requests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from router.capture.clients import make_sync_client
from router.capture.keys import outcomes_key
from router.capture.reader import read_window
from router.capture.records import FinalizeOptions
from router.capture.redisproc import LocalCluster
from router.capture.writer import CaptureWriter
from router.config import CaptureConfig
from router.metrics import Metrics
from tests.helpers import InProcessRouter, config_dict, make_config, wait_for


def _stored_ids(url: str, experiment: str = "t", outcomes: bool = False) -> list[str]:
    try:
        sync = make_sync_client(url, timeout=2.0)
    except Exception:  # the cluster is (still) down
        return []
    try:
        return [r["request_id"] for r in read_window(sync, experiment, outcomes=outcomes)]
    except Exception:
        return []
    finally:
        sync.close()


async def _fire(s: aiohttp.ClientSession, url: str, prefix: str, n: int) -> list[str]:
    ids = [f"{prefix}{i:04d}" for i in range(n)]
    for rid in ids:
        async with s.post(f"{url}/p", headers={"X-Request-Id": rid}, data=b"{}") as r:
            assert r.status == 200
            await r.read()
    return ids


async def _readyz(s: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any]]:
    async with s.get(f"{url}/readyz") as r:
        return r.status, (await r.json())["checks"]["capture"]


async def test_item2_the_probe_survives_a_whole_cluster_outage_and_capture_recovers(
    echo_pair: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    champ, chall = echo_pair
    caplog.set_level(logging.WARNING, "router.capture")
    with LocalCluster(tmp_path / "cluster", masters=3, replicas=0) as cluster:
        url = f"redis+cluster://127.0.0.1:{cluster.ports[0]}"
        d = config_dict(champ, chall, url, tmp=tmp_path)
        d["capture"].update({"batch_size": 20, "batch_interval_ms": 10, "write_timeout_s": 0.5,
                             "spool_dir": str(tmp_path / "spool")})  # fmt: skip
        router = InProcessRouter(make_config(d), tmp_path / "run", url)
        await router.__aenter__()
        try:
            w: CaptureWriter = router.app.writer
            m = router.app.metrics
            async with aiohttp.ClientSession() as s:
                sent = await _fire(s, router.url, "a", 40)
                assert await wait_for(lambda: len(_stored_ids(url)) == 40, timeout=10)

                cluster.stop_all()  # every node down
                down_at = time.monotonic()
                sent += await _fire(s, router.url, "b", 40)
                assert await wait_for(lambda: m.counter_value("router_capture_spooled") >= 40,
                                      timeout=10)  # fmt: skip
                # the probe keeps probing, with backoff, and says so
                failed = lambda: m.counter_value("router_capture_probes", ("failed",))  # noqa: E731
                assert await wait_for(lambda: failed() >= 4, timeout=15)
                assert w.status()["recovering"] and not w.healthy
                assert any("probe failed" in r.getMessage() for r in caplog.records)
                for _ in range(3):  # /readyz answers, truthfully, never raises
                    status, cap = await _readyz(s, router.url)
                    assert status == 200, cap
                    assert cap["ok"] and not cap["redis"] and cap["spooling"] and cap["recovering"]
                    assert cap["error"] and cap["spool_bytes"] > 0

                # it backs off (50 ms doubling to 2 s), it does not retry every 100 ms
                assert failed() <= 5 + (time.monotonic() - down_at), failed()
                cluster.start_all()  # the whole cluster back on the same ports
                assert await wait_for(lambda: w.healthy and w.spool is not None
                                      and not w.spool.pending, timeout=20), w.status()  # fmt: skip
                assert m.counter_value("router_capture_probes", ("ok",)) >= 1
                sent += await _fire(s, router.url, "c", 40)
                assert await wait_for(lambda: len(_stored_ids(url)) >= 120, timeout=10)
                status, cap = await _readyz(s, router.url)
                assert status == 200 and cap["redis"] and cap["error"] is None
        finally:
            await router.__aexit__(None, None, None)  # stop() never raises
        stored = Counter(_stored_ids(url))
        assert sorted(stored) == sorted(sent) and set(stored.values()) == {1}  # exactly once


def _row(i: int) -> dict[str, Any]:
    return {"v": 1, "experiment": "t", "request_id": f"r{i:06d}", "unit": None,
            "metric": "click", "value": 1.0, "ts": 1700000000.0 + i}  # fmt: skip


async def test_item4_a_master_failover_costs_a_few_failed_writes_not_a_retry_storm(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The master of the stream's slot is SIGKILLed under steady writes; its replica takes
    over after ``cluster-node-timeout``. The writer probes that slot (not any node that answers
    PING) with backoff, so the failover costs about one failed write and a handful of log lines,
    not a retry (and spool re-read) every 100 ms."""
    caplog.set_level(logging.INFO, "router.capture")
    with LocalCluster(tmp_path / "cluster", masters=3, replicas=1, node_timeout_ms=1000) as cluster:
        key = outcomes_key("t", cluster=True)
        master = cluster.master_port(key)
        url = cluster.url([next(p for p in cluster.ports[:3] if p != master)])  # one live seed
        cfg = CaptureConfig(redis=url, data_dir=str(tmp_path / "data"), batch_size=50,
                            batch_interval_ms=10, write_timeout_s=0.5)  # fmt: skip
        m = Metrics()
        w = CaptureWriter(cfg, url, m, FinalizeOptions(), 100_000)
        await w.start()
        written = lambda: m.counter_value("router_capture_written")  # noqa: E731
        sent = 0
        feeding = asyncio.Event()
        feeding.set()
        done = False

        async def feed() -> None:  # ~200 records/s
            nonlocal sent
            while not done:
                await feeding.wait()
                w.submit_outcome(_row(sent))
                sent += 1
                await asyncio.sleep(0.005)

        task = asyncio.create_task(feed())
        try:
            assert await wait_for(lambda: written() >= 100, timeout=10)
            # quiesce: every acknowledged write is on the replica before the kill (Redis
            # replication is asynchronous; losing acknowledged writes is not what is tested)
            feeding.clear()
            assert await wait_for(lambda: written() == sent, timeout=5)
            await asyncio.to_thread(cluster.wait_replicas_synced, master)
            caplog.clear()
            errors0 = m.counter_value("router_capture_errors")
            feeding.set()
            cluster.kill_node(master)
            t0 = time.monotonic()
            await asyncio.to_thread(cluster.wait_served_by_other, key, master)
            failover_s = time.monotonic() - t0
            before = sent
            # recovered: the spool is replayed and new records are written directly again
            assert await wait_for(lambda: w.healthy and w.spool is not None and not w.spool.pending
                                  and written() >= before, timeout=15), w.status()  # fmt: skip
        finally:
            done = True
            feeding.set()
            await task
        assert await wait_for(lambda: written() == sent, timeout=10)
        failed_writes = m.counter_value("router_capture_errors") - errors0
        lines = [r for r in caplog.records if r.name == "router.capture"]
        probes = m.counter_value("router_capture_probes")
        await w.stop()
        print(f"failover {failover_s:.1f} s: {failed_writes:.0f} failed write(s), {probes:.0f} "
              f"probe(s), {len(lines)} log line(s), {sent} records")  # fmt: skip
        for r in lines:
            print(f"  {r.levelname} {r.getMessage()[:160]}")
        assert m.counter_value("router_capture_spooled") > 0  # the failover was felt
        assert failed_writes <= 3
        assert len(lines) <= 10
        ids = _stored_ids(url, outcomes=True)
        assert ids == [f"r{i:06d}" for i in range(sent)]  # exactly once, in order
