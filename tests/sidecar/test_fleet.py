"""Issue 19: one live state for the whole fleet, with real `router serve` processes.

Three replicas (``--workers 2`` each) on one Redis: a change through one replica is applied by
all six workers within a second; two concurrent changes: one wins, the other gets 409 with the
current version; a fourth replica started mid-canary serves the current step from its first
request; a replica restarted while Redis is down keeps the ramp (its last known state); and a
late replica (one that does not follow the shared state) moves units between variants, which
is measured from the captured records (units seen in two variants in the window).
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import redis

from router.sidecar.assign import assign
from tests.capture.conftest import OwnRedis
from tests.helpers import (
    TOKEN,
    InProcessRouter,
    ServeProcess,
    config_dict,
    echo_app,
    make_config,
    metric_sum,
    parse_metrics,
    read_stream,
    start_app,
    wait_for,
)

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def heartbeats(url: str) -> dict[str, dict[str, Any]]:
    c = redis.Redis.from_url(url)
    try:
        return {k.decode(): orjson.loads(v) for k, v in c.hgetall("t:replicas").items()}
    finally:
        c.close()


async def post(s: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with s.post(f"{url}/_router/experiment", json=body, headers=AUTH) as r:
        return r.status, await r.json()


async def variants(url: str, units: list[str]) -> dict[str, str]:
    out = {}
    conn = aiohttp.TCPConnector(force_close=True)  # new connections spread over workers
    async with aiohttp.ClientSession(connector=conn) as s:
        for u in units:
            async with s.post(f"{url}/p", headers={"X-User-Id": u}) as r:
                assert r.status == 200
                out[u] = r.headers["X-Router-Variant"]
    return out


def expected(units: list[str], split: float) -> dict[str, str]:
    return {u: "challenger" if assign("test-salt", u, split)[1] else "champion" for u in units}


def crossover(records: list[dict[str, Any]], since: float) -> int:
    """Units served by both variants among the records from ``since`` on."""
    seen: dict[str, set[str]] = defaultdict(set)
    for rec in records:
        if rec["ts"] >= since:
            seen[rec["unit"]].add(rec["served"])
    return sum(1 for v in seen.values() if len(v) > 1)


async def test_three_replicas_share_one_state_new_and_restarted_replicas_keep_the_ramp(
    tmp_path: Path,
) -> None:
    own = OwnRedis(tmp_path / "redis", ["--appendfsync", "always"]).start()
    r1, champ = await start_app(echo_app("champion"))
    r2, chall = await start_app(echo_app("challenger"))
    procs: list[ServeProcess] = []

    def replica(i: int, **control: Any) -> ServeProcess:
        d = config_dict(champ, chall, own.url, tmp=tmp_path / f"r{i}")  # the ConfigMap: split 0
        if control:
            d["control"] = control
        p = ServeProcess(d, tmp_path, workers=2)
        procs.append(p)
        return p

    units = [f"u{i}" for i in range(60)]
    try:
        fleet = [replica(i) for i in range(3)]
        await asyncio.gather(*(asyncio.to_thread(p.start) for p in fleet))
        assert len(heartbeats(own.url)) == 6
        async with aiohttp.ClientSession() as s:
            # a change through one replica: all six workers apply it within a second
            t0 = time.monotonic()
            status, body = await post(s, fleet[0].url, {"split": 0.3, "note": "step 1"})
            assert status == 200, body
            version = body["state"]["version"]
            while time.monotonic() - t0 < 1.0:
                hb = heartbeats(own.url)
                if len(hb) == 6 and all(h["version"] == version for h in hb.values()):
                    break
                await asyncio.sleep(0.01)
            applied_s = time.monotonic() - t0
            hb = heartbeats(own.url)
            assert {h["version"] for h in hb.values()} == {version}, hb
            assert applied_s < 1.0
            for p in fleet:
                assert await variants(p.url, units) == expected(units, 0.3)

            # two concurrent changes based on the same version: one wins, the other gets 409
            res = await asyncio.gather(
                post(s, fleet[1].url, {"split": 0.4, "expected_version": version}),
                post(s, fleet[2].url, {"split": 0.5, "expected_version": version}),
            )
            codes = sorted(code for code, _ in res)
            assert codes == [200, 409], res
            lost = next(b for code, b in res if code == 409)
            assert lost["current_version"] == version + 1
            split = next(b["state"]["split"] for code, b in res if code == 200)
            version += 1

            # a fourth replica (an HPA scale-up) starts from the ConfigMap's split 0 but serves
            # the current step from its first request
            late = replica(3)
            await asyncio.to_thread(late.start)
            assert await variants(late.url, units) == expected(units, split)
            async with s.get(f"{late.url}/readyz") as r:
                control = (await r.json())["checks"]["control"]
                assert r.status == 200 and control["source"] == "redis"
                assert control["version"] == version

            # a replica restarted while Redis is down keeps the ramp: its last known state
            assert fleet[0].stop() == 0
            own.stop()
            restarted = replica(0)  # same pod: same data dir (its last known state)
            await asyncio.to_thread(restarted.start)
            assert await variants(restarted.url, units) == expected(units, split)
            async with s.get(f"{restarted.url}/readyz") as r:
                control = (await r.json())["checks"]["control"]
                assert r.status == 200, "serving the last known state keeps it in rotation"
                assert control["source"] == "last_known" and control["redis"] is False
                assert control["version"] == version
            async with s.get(f"{restarted.url}/metrics") as r:
                assert metric_sum(parse_metrics(await r.text()), "router_control_last_known") >= 1
            # a change is refused while Redis is down (never applied to one replica only)
            status, body = await post(s, restarted.url, {"split": 0.9})
            assert status == 503, body
            own.start()  # Redis back (append-only file: the live state survived)
            t1 = time.monotonic()
            while time.monotonic() - t1 < 5:
                async with s.get(f"{restarted.url}/readyz") as r:
                    control = (await r.json())["checks"]["control"]
                if control["source"] == "redis":
                    break
                await asyncio.sleep(0.1)
            assert control["source"] == "redis" and control["version"] == version

            # crossover caused by a late replica: one replica that does not follow the shared
            # state stays at the ConfigMap's split 0 while the fleet ramps
            stuck = replica(4, shared=False)
            await asyncio.to_thread(stuck.start)
            since = time.time()
            status, body = await post(s, late.url, {"split": 0.6})
            assert status == 200
            await asyncio.sleep(1.0)  # every following replica applied it
            for p in (restarted, late, fleet[1], fleet[2], stuck):
                await variants(p.url, units)
        await asyncio.sleep(0.5)  # capture flushes
        records = read_stream(own.url, "t:pairs")
        moved = crossover(records, since)
        in_challenger = sum(1 for v in expected(units, 0.6).values() if v == "challenger")
        # every unit in the 60% is served by the challenger on the following replicas and by
        # the champion on the late one: all of them cross over, and the records show it
        assert moved == in_challenger > 0
        following = [x for x in records if x["ts"] >= since + 1.0]
        assert crossover([x for x in following if x["unit"] in units], since) == moved
    finally:
        for p in procs:
            if p.proc is not None and p.proc.poll() is None:
                p.stop()
        own.stop()
        await r1.cleanup()
        await r2.cleanup()


async def test_redis_losing_the_live_state_restores_the_ramp_not_the_config(
    tmp_path: Path, redis_url: str, echo_pair: Any
) -> None:
    """Redis restarted without persistence: a replica writes its last known state back (a
    version above the lost one), never the config file's split."""
    champ, chall = echo_pair
    cfg = make_config(config_dict(champ, chall, redis_url, tmp=tmp_path))
    async with InProcessRouter(cfg, tmp_path / "run", redis_url) as router:
        plane = router.app.fleet.plane
        await plane.change_live({"split": 0.25}, expected=None, actor="test")
        assert await wait_for(lambda: router.app.state.version == 2, timeout=2)
        c = redis.Redis.from_url(redis_url)
        try:
            c.delete("t:live")
        finally:
            c.close()
        assert await wait_for(lambda: router.app.state.version == 3, timeout=3)
        live = await plane.read_live()
        assert live is not None and live["version"] == 3 and live["split"] == 0.25
        assert router.app.state.split == 0.25
        events = [r["event"] for r in read_stream_list(redis_url, "t:audit")]
        assert events[-1] == "live_restored"


def read_stream_list(url: str, key: str) -> list[dict[str, Any]]:
    c = redis.Redis.from_url(url)
    try:
        return [orjson.loads(x) for x in c.lrange(key, 0, -1)]
    finally:
        c.close()
