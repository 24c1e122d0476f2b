"""Chaos: the capture path on a real Redis Cluster (3 masters, 3 replicas, 6 redis-server
processes) through a router serving real requests, with the URL's first seed node down at start
(a master: its slots fail over while the router starts) and then a whole-cluster restart. Every
request id must be in the streams exactly once, and no client may see an error."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

from router.capture.clients import make_sync_client
from router.capture.reader import read_window
from router.capture.redisproc import LocalCluster
from router.capture.writer import CaptureWriter
from tests.helpers import InProcessRouter, config_dict, make_config, wait_for


def _stored(url: str) -> list[str]:
    try:
        sync = make_sync_client(url, timeout=2.0)
    except Exception:
        return []
    try:
        return [r["request_id"] for r in read_window(sync, "t")]
    except Exception:
        return []
    finally:
        sync.close()


async def _client(s: aiohttp.ClientSession, url: str, cid: int, stop: asyncio.Event,
                  rate: float, sent: list[str], statuses: list[int]) -> None:  # fmt: skip
    n = 0
    next_at = time.monotonic()
    while not stop.is_set():
        rid = f"c{cid}-{n:06d}"
        async with s.post(f"{url}/p", headers={"X-User-Id": f"u{n % 50}", "X-Request-Id": rid},
                          data=b'{"x": 1}') as r:  # fmt: skip
            await r.read()
            statuses.append(r.status)
        sent.append(rid)
        n += 1
        next_at += 1.0 / rate
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))


async def test_chaos_seed_down_at_start_and_whole_cluster_restart_every_request_exactly_once(
    echo_pair: Any, tmp_path: Path
) -> None:
    champ, chall = echo_pair
    clients, rate = 4, 40.0
    sent: list[list[str]] = [[] for _ in range(clients)]
    statuses: list[int] = []
    phases: dict[str, float] = {}
    with LocalCluster(tmp_path / "cluster", masters=3, replicas=1, node_timeout_ms=1000) as cluster:
        seed = cluster.ports[0]  # a master
        url = cluster.url([seed, cluster.ports[1], cluster.ports[2]])
        cluster.stop_node(seed)  # down before the router starts
        d = config_dict(champ, chall, url, tmp=tmp_path, mirror=0.5)
        d["capture"].update({"batch_size": 50, "batch_interval_ms": 10, "write_timeout_s": 0.5,
                             "pair_shards": 3, "spool_dir": str(tmp_path / "spool")})  # fmt: skip
        t0 = time.monotonic()
        async with InProcessRouter(make_config(d), tmp_path / "run", url) as router:
            w: CaptureWriter = router.app.writer
            m = router.app.metrics
            written = lambda: m.counter_value("router_capture_written")  # noqa: E731
            spooled = lambda: m.counter_value("router_capture_spooled")  # noqa: E731
            total = lambda: sum(len(x) for x in sent)  # noqa: E731
            stop = asyncio.Event()
            async with aiohttp.ClientSession() as s:
                tasks = [
                    asyncio.create_task(_client(s, router.url, i, stop, rate, sent[i], statuses))
                    for i in range(clients)
                ]
                try:
                    # 1. the seed is down: its slots fail over; capture spools, then catches up
                    assert await wait_for(lambda: w.healthy and w.spool is not None
                                          and not w.spool.pending and written() >= 100,
                                          timeout=30), w.status()  # fmt: skip
                    phases["seed down: writing"] = time.monotonic() - t0
                    await asyncio.to_thread(cluster.start_node, seed)  # back, as a replica
                    await asyncio.to_thread(cluster.wait_ok)
                    mark = written()
                    assert await wait_for(lambda: written() >= mark + 100, timeout=10)
                    phases["seed back"] = time.monotonic() - t0

                    # 2. the whole cluster goes down under traffic, and comes back
                    await asyncio.to_thread(cluster.stop_all)
                    mark = spooled()
                    assert await wait_for(lambda: spooled() >= mark + 100, timeout=15)
                    async with s.get(f"{router.url}/readyz") as r:
                        cap = (await r.json())["checks"]["capture"]
                        assert r.status == 200 and cap["spooling"] and cap["recovering"], cap
                    phases["cluster down: spooling"] = time.monotonic() - t0
                    await asyncio.to_thread(cluster.start_all)
                    phases["cluster restarted"] = time.monotonic() - t0
                    assert await wait_for(lambda: w.healthy and w.spool is not None
                                          and not w.spool.pending, timeout=20), w.status()
                    mark = written()
                    assert await wait_for(lambda: written() >= mark + 100, timeout=10)
                    phases["replayed, writing"] = time.monotonic() - t0
                finally:
                    stop.set()
                    await asyncio.gather(*tasks)
                # a write the server applied just before it went down reaches the spool too
                # (the client saw an error) and is skipped at replay as a duplicate
                dups = lambda: m.counter_value("router_capture_replay_duplicates")  # noqa: E731
                assert await wait_for(lambda: written() + dups() >= total(), timeout=15)
                async with s.get(f"{router.url}/readyz") as r:
                    assert r.status == 200 and (await r.json())["checks"]["capture"]["redis"]
            spool_total, replayed = spooled(), m.counter_value("router_capture_replayed")
            duplicates = dups()
            errors = m.counter_value("router_capture_errors")
        # the router has stopped (stop() never raises); count every request id
        stored = Counter(_stored(url))
    ids = [rid for x in sent for rid in x]
    print(f"{len(ids)} requests, {spool_total:.0f} spooled, {replayed:.0f} replayed, "
          f"{duplicates:.0f} skipped as already written, "
          f"{errors:.0f} failed writes; phases (s): "
          + ", ".join(f"{k} {v:.1f}" for k, v in phases.items()))  # fmt: skip
    assert set(statuses) == {200}  # no client saw an error
    assert spool_total > 0 and replayed + duplicates == spool_total
    missing = set(ids) - set(stored)
    assert not missing, f"{len(missing)} lost, e.g. {sorted(missing)[:5]}"
    assert not set(stored) - set(ids)
    assert set(stored.values()) == {1}, [k for k, v in stored.items() if v > 1][:5]
    assert len(stored) == len(ids) >= 1000
