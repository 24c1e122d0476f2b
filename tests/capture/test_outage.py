"""Redis outages and router crashes under traffic: every record exactly once, no client error."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import redis

from tests.capture.conftest import OwnRedis
from tests.helpers import (
    TOKEN,
    InProcessRouter,
    ServeProcess,
    config_dict,
    make_config,
    metric_sum,
    parse_metrics,
    wait_for,
)


def _records(url: str, key: str = "t:pairs") -> list[dict[str, Any]]:
    c = redis.Redis.from_url(url)
    try:
        return [orjson.loads(f[b"r"]) for _i, f in c.xrange(key)]
    finally:
        c.close()


def _xlen(url: str, key: str = "t:pairs") -> int:
    c = redis.Redis.from_url(url, socket_connect_timeout=0.5)
    try:
        return int(c.xlen(key))
    except redis.RedisError:
        return -1
    finally:
        c.close()


def _capture_cfg(d: dict[str, Any], tmp: Path, **kw: Any) -> dict[str, Any]:
    d["capture"].update({"batch_size": 50, "batch_interval_ms": 10, "write_timeout_s": 0.5,
                         "spool_dir": str(tmp / "spool"), **kw})  # fmt: skip
    return d


async def _client(s: aiohttp.ClientSession | None, url: str, cid: int, stop: asyncio.Event,
                  rate: float, sent: list[str], statuses: list[int]) -> None:  # fmt: skip
    if s is None:  # one keep-alive connection: this client's requests stay on one worker
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as own:
            await _client(own, url, cid, stop, rate, sent, statuses)
        return
    n = 0
    next_at = time.monotonic()
    while not stop.is_set():
        rid = f"c{cid:02d}-{n:06d}"
        async with s.post(f"{url}/p", headers={"X-User-Id": f"u{n % 50}", "X-Request-Id": rid},
                          data=b'{"x": 1}') as r:  # fmt: skip
            await r.read()
            statuses.append(r.status)
        sent.append(rid)
        n += 1
        next_at += 1.0 / rate
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))


async def test_redis_killed_under_load_loses_nothing(
    echo_pair: Any, tmp_path: Path, own_redis: OwnRedis
) -> None:
    """~300 requests/s for ~6 s; Redis SIGKILLed for ~2.5 s in the middle and restarted."""
    champ, chall = echo_pair
    own_redis.start()
    d = _capture_cfg(config_dict(champ, chall, own_redis.url, tmp=tmp_path, mirror=0.5), tmp_path)
    clients, rate = 6, 50.0
    sent: list[list[str]] = [[] for _ in range(clients)]
    statuses: list[int] = []
    async with InProcessRouter(make_config(d), tmp_path / "run", own_redis.url) as router:
        stop = asyncio.Event()
        conn = aiohttp.TCPConnector(limit=clients * 2)
        async with aiohttp.ClientSession(connector=conn) as s:
            tasks = [asyncio.create_task(_client(s, router.url, i, stop, rate, sent[i], statuses))
                     for i in range(clients)]  # fmt: skip
            await asyncio.sleep(1.5)
            own_redis.kill()
            await asyncio.sleep(2.5)
            spooled_during_outage = router.app.writer.status()["spool_bytes"]
            own_redis.start()
            await asyncio.sleep(2.0)
            stop.set()
            await asyncio.gather(*tasks)
            total = sum(len(x) for x in sent)
            assert await wait_for(lambda: _xlen(own_redis.url) >= total, timeout=15)
            async with s.get(f"{router.url}/metrics") as r:
                m = parse_metrics(await r.text())
    assert total >= 1500
    assert set(statuses) == {200}  # no client saw an error
    assert spooled_during_outage > 0
    assert metric_sum(m, "router_capture_spooled_total") > 0
    assert metric_sum(m, "router_capture_replayed_total") > 0
    recs = _records(own_redis.url)
    ids = [r["request_id"] for r in recs]
    assert len(ids) == len(set(ids)) == total  # exactly once
    assert set(ids) == {rid for x in sent for rid in x}
    for cid in range(clients):  # in order per client (each client sends sequentially)
        mine = [i for i in ids if i.startswith(f"c{cid:02d}-")]
        assert mine == sent[cid]


async def test_outcomes_posted_while_redis_is_down_arrive_once(
    echo_pair: Any, tmp_path: Path, own_redis: OwnRedis
) -> None:
    champ, chall = echo_pair
    d = _capture_cfg(config_dict(champ, chall, own_redis.url, tmp=tmp_path), tmp_path)
    d["admin"]["outcomes_max_rows"] = 3
    lines = b"\n".join([
        b'{"request_id": "r1", "metric": "click", "value": 1}',
        b'{"unit": "u1", "metric": "revenue", "value": 9.5, "ts": 1700000000}',
        b"{broken",
        b'{"metric": "click", "value": 1}',
        b'{"request_id": "r2", "metric": "click", "value": "x"}',
        b'{"request_id": "r3", "metric": "click", "value": 0, "extra": 1}',
        b'{"request_id": "r4", "metric": "click", "value": 0}',
    ])  # fmt: skip
    async with (
        InProcessRouter(make_config(d), tmp_path / "run", own_redis.url) as router,
        aiohttp.ClientSession() as s,
    ):
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with s.post(f"{router.url}/outcomes", data=lines, headers=auth) as r:
            assert r.status == 200
            doc = await r.json()
        assert (doc["accepted"], doc["rejected"], doc["dropped"]) == (3, 4, 0)
        assert [e["line"] for e in doc["errors"]] == [3, 4, 5, 6]
        reasons = [e["reason"] for e in doc["errors"]]
        assert reasons[0].startswith("invalid JSON") and "request_id or unit" in reasons[1]
        assert reasons[2].startswith("value") and "unknown field" in reasons[3]
        too_many = b"\n".join(b'{"request_id": "b%d", "metric": "m", "value": 1}' % i
                               for i in range(4))  # fmt: skip
        async with s.post(f"{router.url}/outcomes", data=too_many, headers=auth) as r:
            doc = await r.json()
        assert (r.status, doc["accepted"], doc["rejected"]) == (200, 3, 1)
        assert doc["errors"] == [{"line": 4, "reason": "batch larger than 3 rows"}]
        assert await wait_for(lambda: router.app.writer.status()["spool_bytes"] > 0, timeout=5)
        own_redis.start()
        assert await wait_for(lambda: _xlen(own_redis.url, "t:outcomes") == 6, timeout=10)
    rows = _records(own_redis.url, "t:outcomes")
    assert [(r["request_id"], r["unit"]) for r in rows] == [
        ("r1", None), (None, "u1"), ("r4", None), ("b0", None), ("b1", None), ("b2", None)]


async def _fire(url: str, n: int, prefix: str) -> None:
    sem = asyncio.Semaphore(32)
    async with aiohttp.ClientSession() as s:

        async def one(i: int) -> None:
            async with sem, s.post(f"{url}/p", headers={"X-Request-Id": f"{prefix}{i:06d}"}) as r:
                assert r.status == 200
                await r.read()

        await asyncio.gather(*(one(i) for i in range(n)))


async def _spooled(url: str) -> float:
    async with aiohttp.ClientSession() as s, s.get(f"{url}/metrics") as r:
        return metric_sum(parse_metrics(await r.text()), "router_capture_spooled_total")


async def test_router_sigkilled_with_a_spool_and_again_mid_replay_loses_and_repeats_nothing(
    echo_pair: Any, tmp_path: Path, own_redis: OwnRedis
) -> None:
    champ, chall = echo_pair
    n = 3000
    d = _capture_cfg(config_dict(champ, chall, own_redis.url, tmp=tmp_path), tmp_path,
                     batch_size=20, fsync="always")  # fmt: skip
    first = ServeProcess(d, tmp_path).start()  # Redis is not running yet
    try:
        await _fire(first.url, n, "k")
        deadline = time.monotonic() + 15
        while await _spooled(first.url) < n and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert await _spooled(first.url) == n
    finally:
        first.stop(signal.SIGKILL)
    assert list((tmp_path / "spool").glob("*.seg"))

    own_redis.start()
    second = ServeProcess(d, tmp_path).start()
    try:  # crash again as soon as the replay has begun
        deadline = time.monotonic() + 15
        while _xlen(own_redis.url) <= 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.002)
    finally:
        second.stop(signal.SIGKILL)
    at_crash = _xlen(own_redis.url)
    assert at_crash > 0

    third = ServeProcess(d, tmp_path).start()
    try:
        assert await wait_for(lambda: _xlen(own_redis.url) >= n, timeout=20)
        await asyncio.sleep(0.3)
    finally:
        assert third.stop() == 0
    ids = [r["request_id"] for r in _records(own_redis.url)]
    assert len(ids) == len(set(ids)) == n  # exactly once
    assert not list((tmp_path / "spool").glob("*.seg"))  # replayed segments are deleted
    if at_crash < n:  # killed mid-replay: the third router took over the rest
        log = third.log.read_text()
        assert "adopted" in log and "spool replay done" in log, log
    print(f"records in Redis when the replaying router was killed: {at_crash} of {n}")


async def test_redis_killed_under_load_with_two_serve_workers(
    echo_pair: Any, tmp_path: Path, own_redis: OwnRedis
) -> None:
    """The same through `router serve --workers 2`: two processes, two spools, one stream."""
    champ, chall = echo_pair
    own_redis.start()
    d = _capture_cfg(config_dict(champ, chall, own_redis.url, tmp=tmp_path, mirror=0.5), tmp_path)
    clients, rate = 6, 50.0
    sent: list[list[str]] = [[] for _ in range(clients)]
    statuses: list[int] = []
    router = ServeProcess(d, tmp_path, workers=2).start()
    try:
        stop = asyncio.Event()
        tasks = [asyncio.create_task(_client(None, router.url, i, stop, rate, sent[i], statuses))
                 for i in range(clients)]  # fmt: skip
        await asyncio.sleep(1.5)
        own_redis.kill()
        await asyncio.sleep(2.5)
        own_redis.start()
        await asyncio.sleep(1.5)
        stop.set()
        await asyncio.gather(*tasks)
        total = sum(len(x) for x in sent)
        assert await wait_for(lambda: _xlen(own_redis.url) >= total, timeout=15)
        async with aiohttp.ClientSession() as s, s.get(f"{router.url}/metrics") as r:
            m = parse_metrics(await r.text())
    finally:
        assert router.stop() == 0
    assert total >= 1400 and set(statuses) == {200}
    assert metric_sum(m, "router_capture_spooled_total") > 0
    assert metric_sum(m, "router_capture_replayed_total") > 0
    recs = _records(own_redis.url)
    ids = [r["request_id"] for r in recs]
    assert len(ids) == len(set(ids)) == total
    for cid in range(clients):
        assert [i for i in ids if i.startswith(f"c{cid:02d}-")] == sent[cid]
    assert len({r["request_id"] for r in recs}) == total
    assert not list((tmp_path / "spool").glob("*.seg"))
