"""Redis Cluster: a real local 3-master cluster (redis-server --cluster-enabled)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from router.capture.clients import make_sync_client
from router.capture.keys import outcomes_key, pair_keys, pairs_key
from router.capture.reader import earliest_available, iter_merged, read_window, stream_keys
from router.capture.records import FinalizeOptions, PendingRecord, Side
from router.capture.redisproc import LocalCluster
from router.capture.writer import CaptureWriter
from router.config import CaptureConfig, ConfigError, parse_config, parse_redis_url
from router.metrics import Metrics
from router.netutil import free_port
from tests.helpers import wait_for


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[int]]:
    """Three masters, no replicas: the ports of the nodes."""
    with LocalCluster(tmp_path_factory.mktemp("cluster"), masters=3, replicas=0) as c:
        yield c.ports


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


def test_item3_a_cluster_url_takes_several_seeds() -> None:
    u = parse_redis_url("redis+cluster://alice:p%40ss@10.0.0.1:7000,node-b:7001,[::1]:7002,c/0"
                        "?ssl_ca_certs=/etc/ca.pem")  # fmt: skip
    assert u.cluster and u.scheme == "redis"
    assert u.seeds == (("10.0.0.1", 7000), ("node-b", 7001), ("::1", 7002), ("c", 6379))
    assert u.node_url(0) == "redis://alice:p%40ss@10.0.0.1:7000/0?ssl_ca_certs=/etc/ca.pem"
    assert u.node_url(2) == "redis://alice:p%40ss@[::1]:7002/0?ssl_ca_certs=/etc/ca.pem"
    tls = parse_redis_url("rediss+cluster://h1:1,h2:2")
    assert tls.scheme == "rediss" and tls.node_url(1) == "rediss://h2:2"
    one = parse_redis_url("redis://127.0.0.1:6390/2")
    assert not one.cluster and one.seeds == (("127.0.0.1", 6390),)
    assert parse_redis_url("unix:///run/redis.sock").seeds == ()


@pytest.mark.parametrize(("url", "reason"), [
    ("redis+cluster://h1:7000,h2:x", "bad port"),
    ("redis+cluster://h1:7000,,h2:7001", "bad host"),
    ("redis+cluster://h1:70000", "bad port"),
    ("redis+cluster://h1:7000,h1:7000", "listed twice"),
    ("redis://h1:7000,h2:7001", "several hosts need a cluster URL"),
    ("redis+cluster://", "no host"),
    ("http://h1:7000", "must be 'embedded' or"),
])  # fmt: skip
def test_item3_a_malformed_cluster_url_is_a_config_error_naming_the_key(
    url: str, reason: str
) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_redis_url(url)
    with pytest.raises(ConfigError) as err:
        parse_config({
            "champion": {"url": "http://127.0.0.1:1", "version": "a"},
            "challenger": {"url": "http://127.0.0.1:2", "version": "b"},
            "experiment": {"name": "t", "salt": "s"},
            "capture": {"redis": url},
        }, "router.yaml")  # fmt: skip
    assert "capture.redis" in str(err.value) and reason in str(err.value)


async def test_item3_writer_and_readers_start_while_the_first_seeds_are_down(
    cluster: list[int], tmp_path: Path
) -> None:
    down = [free_port(), free_port()]  # nothing listens there: two seed nodes that are down
    url = "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in [*down, cluster[1], cluster[2]])
    await _write(url, tmp_path, 2, {"seeds": 300})  # all written directly, nothing spooled
    sync = make_sync_client(url)  # the readers (analyze, export, controller) take it too
    try:
        ids = [r["request_id"] for r in read_window(sync, "seeds")]
        assert sorted(ids) == [f"seeds-{i:05d}" for i in range(300)]
    finally:
        sync.close()
