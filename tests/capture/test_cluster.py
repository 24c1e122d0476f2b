"""Redis Cluster: a real local 3-master cluster (redis-server --cluster-enabled, redis-cli)."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from router.capture import (
    CaptureWriter,
    make_sync_client,
    outcomes_key,
    pair_keys,
    pairs_key,
)
from router.capture_reader import earliest_available, iter_merged, read_window, stream_keys
from router.config import CaptureConfig
from router.metrics import Metrics
from router.netutil import free_port
from router.records import FinalizeOptions, PendingRecord, Side
from router.redisproc import RedisProcess
from tests.helpers import wait_for


def _cluster_port() -> int:
    while True:  # the cluster bus listens on port + 10000
        p = free_port()
        if p < 55000:
            return p


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[int]]:
    cli = shutil.which("redis-cli")
    if cli is None:
        pytest.skip("redis-cli is not on PATH: cannot create a Redis Cluster")
    base = tmp_path_factory.mktemp("cluster")
    ports = [_cluster_port() for _ in range(3)]
    procs = []
    try:
        for p in ports:
            procs.append(RedisProcess(
                base / str(p), port=p, prefer_path=True, appendonly=False,
                extra_args=["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                            "--cluster-node-timeout", "2000"],
            ).start())  # fmt: skip
        subprocess.run(
            [cli, "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports],
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            states = []
            for p in ports:
                with redis.Redis(port=p) as c:
                    states.append(c.cluster("info")["cluster_state"])
            if all(s == "ok" for s in states):
                break
            time.sleep(0.1)
        yield ports
    finally:
        for proc in procs:
            proc.stop()


def _rec(exp: str, i: int) -> PendingRecord:
    return PendingRecord(
        experiment=exp, request_id=f"{exp}-{i:05d}", ts=1700000000.0 + i, unit=f"u{i % 17}",
        bucket=i % 10000, served="champion", mirrored=False,
        champion=Side("v1", 200, 1.5, b'{"score": 0.5}'),
    )  # fmt: skip


def _node_port(sync: Any, key: str) -> int:
    return int(sync.get_node_from_key(key).port)


def _on_node(port: int, key: str) -> bool:
    with redis.Redis(port=port) as c:
        return bool(c.exists(key))


async def _write(url: str, tmp: Path, shards: int, rows: dict[str, int]) -> Metrics:
    cfg = CaptureConfig(redis=url, data_dir=str(tmp), batch_size=100, batch_interval_ms=5,
                        pair_shards=shards)  # fmt: skip
    m = Metrics()
    w = CaptureWriter(cfg, url, m, FinalizeOptions(), 100_000)
    await w.start()
    for exp, n in rows.items():
        for i in range(n):
            assert w.submit_record(_rec(exp, i))
        for i in range(5):
            w.submit_outcome({"v": 1, "experiment": exp, "request_id": f"{exp}-{i:05d}",
                              "unit": None, "metric": "m", "value": 1.0, "ts": 1.0})  # fmt: skip
    total = sum(rows.values()) + 5 * len(rows)
    ok = await wait_for(lambda: m.counter_value("router_capture_written") >= total, timeout=15)
    assert ok, (m.counters, w.status())
    assert m.counter_value("router_capture_written") == total
    await w.stop()
    assert w.healthy and m.counter_value("router_capture_spooled") == 0
    return m


async def test_experiments_spread_over_masters_and_read_back_complete(
    cluster: list[int], tmp_path: Path
) -> None:
    url = f"redis+cluster://127.0.0.1:{cluster[0]}"
    exps = {f"exp{i}": 200 + i for i in range(8)}
    await _write(url, tmp_path, 1, exps)
    sync = make_sync_client(url)
    try:
        nodes = set()
        for exp, n in exps.items():
            pk, ok = pairs_key(exp, cluster=True), outcomes_key(exp, cluster=True)
            assert pk == f"{{{exp}}}:pairs"
            port = _node_port(sync, pk)
            assert port == _node_port(sync, ok)  # one experiment's streams on one shard
            assert _on_node(port, pk) and _on_node(port, ok)  # really stored there
            nodes.add(port)
            recs = list(read_window(sync, exp))
            assert [r["request_id"] for r in recs] == [f"{exp}-{i:05d}" for i in range(n)]
            assert len(list(read_window(sync, exp, outcomes=True))) == 5
        assert len(nodes) >= 2  # experiments spread over the masters
    finally:
        sync.close()


async def test_a_hot_experiment_sharded_over_masters_reads_back_in_merged_order(
    cluster: list[int], tmp_path: Path
) -> None:
    url = f"redis+cluster://127.0.0.1:{cluster[0]}"
    await _write(url, tmp_path, 6, {"hot": 3000})
    sync = make_sync_client(url)
    try:
        keys = stream_keys(sync, "hot")
        assert keys == pair_keys("hot", cluster=True, shards=6)
        assert keys[0] == "{hot:0}:pairs"
        assert len({_node_port(sync, k) for k in keys}) >= 2  # the shards spread out
        entries = list(iter_merged(sync, keys))
        assert sorted(e.doc["request_id"] for e in entries) == [f"hot-{i:05d}" for i in range(3000)]
        orders = [e.order for e in entries]
        assert orders == sorted(orders)  # merged by stream id
        assert len({e.key for e in entries}) == 6
        first = earliest_available(sync, keys)
        assert first is not None and abs(first - time.time()) < 60
    finally:
        sync.close()
