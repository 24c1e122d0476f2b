"""`router serve` as real processes: workers, restarts, live changes, SIGTERM under load."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp

from router.assign import assign
from tests.helpers import (
    TOKEN,
    ServeProcess,
    config_dict,
    metric_sum,
    parse_metrics,
    read_stream,
    wait_for,
)


async def _variants(url: str, units: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    conn = aiohttp.TCPConnector(force_close=True)  # new connections spread over workers
    async with aiohttp.ClientSession(connector=conn) as s:
        for u in units:
            async with s.post(f"{url}/p", headers={"X-User-Id": u}) as r:
                assert r.status == 200
                out[u] = r.headers["X-Router-Variant"]
    return out


async def test_sticky_across_workers_and_restart(
    echo_pair: Any, tmp_path: Path, redis_url: str
) -> None:
    champ, chall = echo_pair
    cfg = config_dict(champ, chall, redis_url, tmp=tmp_path, split=0.4)
    units = [f"user-{i}" for i in range(150)]
    first = ServeProcess(cfg, tmp_path, workers=2).start()
    try:
        a = await _variants(first.url, units)
        b = await _variants(first.url, units)
    finally:
        assert first.stop() == 0
    second = ServeProcess(cfg, tmp_path, workers=1).start()
    try:
        c = await _variants(second.url, units)
    finally:
        assert second.stop() == 0
    expected = {u: "challenger" if assign("test-salt", u, 0.4)[1] else "champion" for u in units}
    assert a == b == c == expected
    # both workers served traffic: records carry request ids with two process prefixes
    recs = read_stream(redis_url, "t:pairs")
    assert len(recs) == 450
    prefixes = {r["request_id"][:10] for r in recs}
    assert len(prefixes) >= 3  # 2 workers of the first router + 1 of the second


async def test_live_change_reaches_all_workers_within_a_second(
    echo_pair: Any, tmp_path: Path, redis_url: str
) -> None:
    champ, chall = echo_pair
    router = ServeProcess(config_dict(champ, chall, redis_url, tmp=tmp_path), tmp_path, workers=2)
    router.start()
    try:
        units = [f"u{i}" for i in range(40)]
        assert set((await _variants(router.url, units)).values()) == {"champion"}
        async with (
            aiohttp.ClientSession() as s,
            s.post(
                f"{router.url}/_router/experiment",
                json={"split": 1.0},
                headers={"Authorization": f"Bearer {TOKEN}"},
            ) as r,
        ):
            assert r.status == 200
        await asyncio.sleep(1.0)
        assert set((await _variants(router.url, units)).values()) == {"challenger"}
        # the metrics are the sum over both workers: every request of this test is counted
        # (another worker's values lag by at most one snapshot interval)
        m: dict[str, float] = {}

        async def all_counted() -> bool:
            nonlocal m
            async with aiohttp.ClientSession() as s, s.get(f"{router.url}/metrics") as r:
                m = parse_metrics(await r.text())
            return metric_sum(m, "router_requests_total") == 80

        assert await wait_for(all_counted, timeout=3.0), m
        assert metric_sum(m, "router_control_changes_total") >= 2  # applied by both workers
    finally:
        assert router.stop() == 0
    assert "live state v2 applied" in router.log.read_text()


async def test_sigterm_under_load_loses_no_record(
    echo_pair: Any, tmp_path: Path, redis_url: str
) -> None:
    champ, chall = echo_pair
    cfg = config_dict(champ, chall, redis_url, tmp=tmp_path, mirror=0.5)
    router = ServeProcess(cfg, tmp_path, workers=2).start()
    ok_ids: set[str] = set()
    stop_at = time.monotonic() + 2.5
    errors = 0

    async def client(i: int) -> None:
        nonlocal errors
        async with aiohttp.ClientSession() as s:
            n = 0
            while time.monotonic() < stop_at:
                n += 1
                try:
                    async with s.post(f"{router.url}/p", headers={"X-User-Id": f"c{i}-{n}"}) as r:
                        if r.status == 200:
                            ok_ids.add(r.headers["X-Request-Id"])
                except aiohttp.ClientError:
                    errors += 1
                    await asyncio.sleep(0.01)

    async def terminate() -> int:
        await asyncio.sleep(1.2)
        return await asyncio.to_thread(router.stop)

    results = await asyncio.gather(*(client(i) for i in range(8)), terminate())
    assert results[-1] == 0
    assert len(ok_ids) > 50
    stored = {r["request_id"] for r in read_stream(redis_url, "t:pairs")}
    assert ok_ids <= stored  # every answered request has its record
    assert "worker stopped cleanly" in router.log.read_text()
