"""`router serve` as real processes: workers, restarts, live changes, SIGTERM under load."""

from __future__ import annotations

import asyncio
import resource
import signal
import socket
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from router.sidecar.assign import assign
from tests.helpers import (
    TOKEN,
    ServeProcess,
    config_dict,
    echo_app,
    metric_sum,
    parse_metrics,
    read_stream,
    start_app,
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


async def test_serve_injects_the_promotion_view_into_every_worker(
    echo_pair: Any, tmp_path: Path, redis_url: str
) -> None:
    """The sidecar never imports the promotion package: `router serve` hands its (forked) workers
    the view, so ``/promotion`` reads the controller state from Redis on every worker (here: no
    controller ran for the experiment, 404), not the 503 of a router started without a view."""
    champ, chall = echo_pair
    cfg = config_dict(champ, chall, redis_url, tmp=tmp_path)
    router = ServeProcess(cfg, tmp_path, workers=2).start()
    try:
        conn = aiohttp.TCPConnector(force_close=True)  # new connections spread over workers
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with aiohttp.ClientSession(connector=conn, headers=auth) as s:
            for _ in range(6):
                async with s.get(f"{router.url}/_router/promotion?experiment=none-ran") as r:
                    doc = await r.json()
                    assert r.status == 404, doc
                    assert doc["error"] == "no promotion state for experiment 'none-ran'"
    finally:
        assert router.stop() == 0


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


async def test_item8_multiworker_sigterm_refuses_new_connections_while_draining(
    tmp_path: Path,
) -> None:
    """With --workers 2, once SIGTERM arrives new connections are refused at once (the parent's
    copy of the listening socket is closed too), while an in-flight request still finishes."""
    slow, slow_url = await start_app(echo_app("champion", delay=2.0))
    try:
        cfg = config_dict(slow_url, slow_url, None, tmp=tmp_path)
        cfg["champion"]["timeout"] = 5.0
        router = ServeProcess(cfg, tmp_path, workers=2).start()
        async with aiohttp.ClientSession() as s:
            in_flight = asyncio.create_task(s.post(f"{router.url}/p", data=b"x"))
            await asyncio.sleep(0.5)  # the request is at the (slow) upstream now
            assert router.proc is not None
            router.proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.5)
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", router.port), timeout=1).close()
            r = await in_flight
            assert r.status == 200
            r.release()
        assert await asyncio.to_thread(router.stop) == 0
    finally:
        await slow.cleanup()


async def test_item2_client_flood_leaves_descriptors_for_upstream_sockets(
    echo_pair: Any, tmp_path: Path
) -> None:
    """RLIMIT_NOFILE 256 and 300 idle clients: the worker caps its client connections
    (max_connections is lowered to fit the limit, the rest get 503), so a proxied request
    still gets an upstream socket (before: 502 "Too many open files")."""
    champ, chall = echo_pair
    cfg = config_dict(champ, chall, None, tmp=tmp_path)
    for side in ("champion", "challenger"):
        cfg[side]["pool_size"] = 4
    router = ServeProcess(cfg, tmp_path, workers=1)
    await asyncio.to_thread(
        router.start, preexec=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
    )

    def flood() -> tuple[bytes, bytes]:
        clients = [socket.create_connection(("127.0.0.1", router.port)) for _ in range(301)]
        try:
            time.sleep(0.5)
            first, last = clients[0], clients[-1]
            first.sendall(b"POST /p HTTP/1.1\r\nHost: r\r\nContent-Length: 2\r\n\r\n{}")
            first.settimeout(5)
            last.settimeout(5)
            return first.recv(65536), last.recv(100)
        finally:
            for c in clients:
                c.close()

    try:
        answer, beyond = await asyncio.to_thread(flood)
    finally:
        code = await asyncio.to_thread(router.stop)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
    assert beyond.startswith(b"HTTP/1.1 503 ")
    assert code == 0
    assert "max_connections lowered" in router.log.read_text()
