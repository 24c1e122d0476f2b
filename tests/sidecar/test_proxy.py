"""The sidecar in-process against real upstream servers and a real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from router.demo.models import CHALLENGER_WEIGHTS, ModelServer, ModelSpec
from router.sidecar.assign import assign
from tests.helpers import (
    TOKEN,
    InProcessRouter,
    config_dict,
    echo_app,
    free_port,
    get_json,
    make_config,
    metric_sum,
    parse_metrics,
    read_stream,
    start_app,
    wait_for,
)

PER_PROCESS = {"shared": False}  # routers whose upstreams differ within one test


async def _metrics(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    async with session.get(f"{url}/metrics") as r:
        assert r.status == 200
        return parse_metrics(await r.text())


async def test_forwarding_is_exact(echo_pair: Any, tmp_path: Path, redis_url: str) -> None:
    champ, chall = echo_pair
    cfg = make_config(config_dict(champ, chall, redis_url, tmp=tmp_path))
    async with (
        InProcessRouter(cfg, tmp_path / "run", redis_url) as router,
        aiohttp.ClientSession() as s,
    ):
        headers = {
            "X-User-Id": "alice",
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "X-Custom": "kept",
            "Proxy-Authorization": "secret",  # hop-by-hop: must not be forwarded
            "Keep-Alive": "timeout=5",
            "X-Forwarded-For": "10.0.0.1",
            "X-Request-Id": "rid-123",
        }
        body = b'{"user": {"id": "alice"}, "features": [1, 2]}'
        async with s.put(
            f"{router.url}/v1/models/m:predict?a=1&b=%20x", data=body, headers=headers
        ) as r:
            assert r.status == 200
            assert r.headers["X-Request-Id"] == "rid-123"
            assert r.headers["X-Router-Variant"] == "champion"
            assert r.headers["X-Upstream"] == "champion"
            assert r.headers["Set-Cookie"] == "a=b"
            doc = await r.json()
        seen = {k.lower(): v for k, v in doc["headers"]}
        assert doc["method"] == "PUT"
        assert doc["path_qs"] == "/v1/models/m:predict?a=1&b=%20x"
        assert doc["body"] == body.decode()
        assert seen["traceparent"] == headers["traceparent"]
        assert seen["x-custom"] == "kept"
        assert "proxy-authorization" not in seen and "keep-alive" not in seen
        assert seen["x-forwarded-for"] == "10.0.0.1, 127.0.0.1"
        assert seen["x-forwarded-proto"] == "http"
        assert seen["x-request-id"] == "rid-123"
        assert seen["host"] == f"127.0.0.1:{router.port}"  # Host passed through, never mangled


async def test_response_byte_identical_to_direct_call(tmp_path: Path, redis_url: str) -> None:
    champion = await ModelServer(ModelSpec("champ-1")).start()
    challenger = await ModelServer(ModelSpec("chall-2", CHALLENGER_WEIGHTS)).start()
    cfg = make_config(config_dict(champion.url, challenger.url, redis_url, tmp=tmp_path))
    try:
        async with (
            InProcessRouter(cfg, tmp_path / "run", redis_url) as router,
            aiohttp.ClientSession() as s,
        ):
            for i in range(20):
                body = orjson.dumps(
                    {"user": {"id": f"u{i}"}, "features": [i / 10, 1 - i / 10, 0.5]}
                )
                async with s.post(f"{champion.url}/predict", data=body) as r:
                    direct = (r.status, await r.read(), r.headers.get("Content-Type"))
                async with s.post(f"{router.url}/predict", data=body) as r:
                    via = (r.status, await r.read(), r.headers.get("Content-Type"))
                    assert r.headers["X-Router-Variant"] == "champion"
                assert via == direct
            # malformed JSON is still proxied unchanged (the unit falls back to the request id)
            async with s.post(f"{champion.url}/predict", data=b"{not json") as r:
                direct = (r.status, await r.read())
            async with s.post(f"{router.url}/predict", data=b"{not json") as r:
                assert (r.status, await r.read()) == direct
            m = await _metrics(s, router.url)
            assert metric_sum(m, "router_assignment_fallbacks_total", reason="no_unit") == 1
    finally:
        await champion.stop()
        await challenger.stop()


async def test_split_sticky_and_recorded(echo_pair: Any, tmp_path: Path, redis_url: str) -> None:
    champ, chall = echo_pair
    cfg = make_config(config_dict(champ, chall, redis_url, tmp=tmp_path, split=0.3))
    units = [f"user-{i}" for i in range(200)]
    async with (
        InProcessRouter(cfg, tmp_path / "run", redis_url) as router,
        aiohttp.ClientSession() as s,
    ):
        for rnd in range(2):
            for u in units:
                # unit from the header on round 0, from the JSON body path on round 1
                kw: dict[str, Any] = (
                    {"headers": {"X-User-Id": u}}
                    if rnd == 0
                    else {"data": orjson.dumps({"user": {"id": u}})}
                )
                async with s.post(f"{router.url}/predict", **kw) as r:
                    expected = "challenger" if assign("test-salt", u, 0.3)[1] else "champion"
                    assert r.headers["X-Router-Variant"] == expected
                    assert (await r.json())["name"] == expected
        assert await wait_for(lambda: len(read_stream(redis_url, "t:pairs")) == 400)
    recs = read_stream(redis_url, "t:pairs")
    for rec in recs:
        b, chall_ = assign("test-salt", rec["unit"], 0.3)
        assert rec["bucket"] == b
        assert rec["served"] == ("challenger" if chall_ else "champion")
        side = rec[rec["served"]]
        assert side["status"] == 200 and side["latency_ms"] > 0
        assert side["prediction"] == (0.75 if chall_ else 0.25)  # extracted by path "score"
        other = "champion" if rec["served"] == "challenger" else "challenger"
        assert rec[other] is None and rec["mirrored"] is False and rec["contract"] is None
        assert rec["v"] == 1 and rec["experiment"] == "t"
    assert len({r["request_id"] for r in recs}) == 400


async def test_challenger_failure_falls_back_to_champion(tmp_path: Path, redis_url: str) -> None:
    r1, champ = await start_app(echo_app("champion"))
    r2, chall = await start_app(echo_app("challenger", status=503))
    dead = f"http://127.0.0.1:{free_port()}"
    try:
        for challenger_url, reason in ((chall, "5xx"), (dead, "connect")):
            d = config_dict(champ, challenger_url, redis_url, tmp=tmp_path, split=1.0)
            d["control"] = PER_PROCESS  # one config per router, not one fleet's ramp
            cfg = make_config(d)
            async with InProcessRouter(cfg, tmp_path / f"run-{reason}", redis_url) as router:
                async with aiohttp.ClientSession() as s:
                    for i in range(5):
                        async with s.post(f"{router.url}/p", headers={"X-User-Id": f"u{i}"}) as r:
                            assert r.status == 200
                            assert (await r.json())["name"] == "champion"
                            assert r.headers["X-Router-Variant"] == "champion"
                            assert r.headers["X-Router-Fallback"] == f"challenger-{reason}"
                    m = await _metrics(s, router.url)
                    assert metric_sum(m, "router_challenger_fallbacks_total", reason=reason) == 5
    finally:
        await r1.cleanup()
        await r2.cleanup()
    recs = read_stream(redis_url, "t:pairs")
    assert len(recs) == 10
    for rec in recs:  # intention to treat: the record keeps the assignment and both answers
        assert rec["served"] == "challenger"
        assert rec["champion"]["status"] == 200
        assert rec["challenger"]["status"] == 503 or rec["challenger"]["error"].startswith(
            "connect"
        )


async def test_shadow_mirrors_off_path_and_records_pairs(tmp_path: Path, redis_url: str) -> None:
    champion = await ModelServer(ModelSpec("champ-1")).start()
    chall_spec = ModelSpec("chall-2", CHALLENGER_WEIGHTS, extra_field=True, keep_headers=5)
    challenger = await ModelServer(chall_spec).start()
    cfg = make_config(
        config_dict(champion.url, challenger.url, redis_url, tmp=tmp_path, mirror=1.0)
    )
    try:
        async with (
            InProcessRouter(cfg, tmp_path / "run", redis_url) as router,
            aiohttp.ClientSession() as s,
        ):
            for i in range(50):
                body = orjson.dumps({"user": {"id": f"u{i}"}, "features": [0.1 * i, 0.2, 0.3]})
                async with s.post(f"{router.url}/predict", data=body) as r:
                    assert r.status == 200 and r.headers["X-Router-Variant"] == "champion"
                    assert (await r.json())["model"] == "champ-1"
            assert await wait_for(lambda: len(read_stream(redis_url, "t:pairs")) == 50)
        assert chall_spec.shadow_calls == 50
        assert all(h.get("X-Shadow-Request") == "1" for h in chall_spec.seen_headers)
        assert all(h["Host"] == f"127.0.0.1:{router.port}" for h in chall_spec.seen_headers)
    finally:
        await champion.stop()
        await challenger.stop()
    for rec in read_stream(redis_url, "t:pairs"):
        assert rec["mirrored"] is True and rec["served"] == "champion"
        assert rec["champion"]["version"] == "champ-1" and rec["challenger"]["version"] == "chall-2"
        assert 0 <= rec["champion"]["prediction"] <= 1 and 0 <= rec["challenger"]["prediction"] <= 1
        assert rec["contract"] == {
            "missing": [],
            "extra": ["explanation", "explanation.top_feature"],
            "retyped": [],
        }


@pytest.mark.parametrize("shadow_kind", ["slow", "dead"])
async def test_bad_shadow_never_touches_client(
    shadow_kind: str, tmp_path: Path, redis_url: str
) -> None:
    r1, champ = await start_app(echo_app("champion"))
    slow_runner = None
    if shadow_kind == "slow":
        slow_runner, chall = await start_app(echo_app("challenger", delay=2.0))
    else:
        chall = f"http://127.0.0.1:{free_port()}"

    async def run(mirror: float, run_dir: str) -> tuple[list[bytes], list[float]]:
        cfg = make_config(config_dict(champ, chall, redis_url, tmp=tmp_path, mirror=mirror))
        bodies, lat = [], []
        async with (
            InProcessRouter(cfg, tmp_path / run_dir, redis_url) as router,
            aiohttp.ClientSession() as s,
        ):
            for i in range(60):
                t0 = time.perf_counter()
                async with s.post(f"{router.url}/p", headers={"X-User-Id": f"u{i}"}) as r:
                    assert r.status == 200
                    doc = await r.json()
                    lat.append(time.perf_counter() - t0)
                    bodies.append(doc["name"].encode() + doc["body"].encode())
        return bodies, sorted(lat)

    try:
        off_bodies, off = await run(0.0, "off")
        on_bodies, on = await run(1.0, "on")
    finally:
        await r1.cleanup()
        if slow_runner:
            await slow_runner.cleanup()
    assert on_bodies == off_bodies
    p50_on, p50_off = on[len(on) // 2], off[len(off) // 2]
    assert p50_on < p50_off * 5 + 0.02, (p50_on, p50_off)  # generous: never the shadow's 2 s
    assert max(on) < 1.0


async def test_shadow_queue_full_and_big_body_are_counted(tmp_path: Path, redis_url: str) -> None:
    r1, champ = await start_app(echo_app("champion"))
    r2, chall = await start_app(echo_app("challenger", delay=1.0))
    d = config_dict(champ, chall, redis_url, tmp=tmp_path, mirror=1.0)
    d["limits"].update(shadow_queue=2, shadow_concurrency=1)
    cfg = make_config(d)
    try:
        async with (
            InProcessRouter(cfg, tmp_path / "run", redis_url) as router,
            aiohttp.ClientSession() as s,
        ):
            for i in range(10):
                async with s.post(f"{router.url}/p", headers={"X-User-Id": f"u{i}"}) as r:
                    assert r.status == 200
            async with s.post(
                f"{router.url}/p", headers={"X-User-Id": "big"}, data=b"x" * 5000
            ) as r:
                assert r.status == 200
            m = await _metrics(s, router.url)
            assert metric_sum(m, "router_shadow_dropped_total", reason="queue_full") >= 7
            assert metric_sum(m, "router_shadow_dropped_total", reason="body_too_large") == 1
    finally:
        await r1.cleanup()
        await r2.cleanup()
    # every request still has its record (dropped shadows are recorded without the shadow side)
    recs = read_stream(redis_url, "t:pairs")
    assert len(recs) == 11


async def test_shadow_guard_throttles_and_restores(tmp_path: Path, redis_url: str) -> None:
    champ_spec = ModelSpec("champ-1", error_rate=1.0)
    champion = await ModelServer(champ_spec).start()
    challenger = await ModelServer(ModelSpec("chall-2")).start()
    d = config_dict(champion.url, challenger.url, redis_url, tmp=tmp_path, mirror=1.0)
    cfg = make_config(d)
    body = orjson.dumps({"features": [1, 2, 3]})
    try:
        async with (
            InProcessRouter(cfg, tmp_path / "run", redis_url) as router,
            aiohttp.ClientSession() as s,
        ):
            for i in range(40):
                async with s.post(
                    f"{router.url}/predict", headers={"X-User-Id": f"u{i}"}, data=body
                ) as r:
                    assert r.status == 503  # the champion's answer, unchanged
            assert await wait_for(lambda: router.app.guard.throttled, timeout=3)
            _, state = await get_json(s, f"{router.url}/_router/state")
            assert state["guard"]["throttled"] is True and state["guard"]["effective_mirror"] == 0
            before = router.app.metrics.counter_value("router_shadow_dispatched")
            for i in range(10):
                async with s.post(
                    f"{router.url}/predict", headers={"X-User-Id": f"v{i}"}, data=body
                ):
                    pass
            assert router.app.metrics.counter_value("router_shadow_dispatched") == before
            m = await _metrics(s, router.url)
            assert metric_sum(m, "router_shadow_throttled_total") == 10
            assert metric_sum(m, "router_shadow_guard_changes_total", state="throttled") == 1
            champ_spec.error_rate = 0.0  # the champion recovers
            for i in range(40):
                async with s.post(
                    f"{router.url}/predict", headers={"X-User-Id": f"w{i}"}, data=body
                ) as r:
                    assert r.status == 200
                await asyncio.sleep(0.05)
            assert await wait_for(lambda: not router.app.guard.throttled, timeout=5)
            m = await _metrics(s, router.url)
            assert metric_sum(m, "router_shadow_guard_changes_total", state="restored") == 1
    finally:
        await champion.stop()
        await challenger.stop()


async def test_bad_input_and_upstream_failures(tmp_path: Path, redis_url: str) -> None:
    r1, slow = await start_app(echo_app("champion", delay=3.0))
    dead = f"http://127.0.0.1:{free_port()}"
    try:
        cfg = make_config(dict(config_dict(dead, dead, redis_url, tmp=tmp_path),
                               control=PER_PROCESS))  # fmt: skip
        async with (
            InProcessRouter(cfg, tmp_path / "a", redis_url) as router,
            aiohttp.ClientSession() as s,
        ):
            async with s.post(f"{router.url}/p", data=b"x" * 70_000) as r:
                assert r.status == 413
                assert (await r.json())["error"] == "request body too large"

            async def chunks() -> Any:
                for _ in range(20):
                    yield b"y" * 5000

            async with s.post(f"{router.url}/p", data=chunks()) as r:  # chunked, no length
                assert r.status == 413
            async with s.get(f"{router.url}/p") as r:
                assert r.status == 502
                doc = await r.json()
                assert doc["upstream"] == "champion" and doc["error"] == "upstream unavailable"
            async with s.get(f"{router.url}/readyz") as r:
                assert r.status == 503
                assert (await r.json())["checks"]["champion"]["ok"] is False
        d = config_dict(slow, dead, redis_url, tmp=tmp_path)
        d["control"] = PER_PROCESS
        d["champion"]["timeout"] = 0.3
        async with (
            InProcessRouter(make_config(d), tmp_path / "b", redis_url) as router,
            aiohttp.ClientSession() as s,
        ):
            async with s.get(f"{router.url}/p") as r:
                assert r.status == 504
                assert (await r.json())["upstream"] == "champion"
            async with s.get(f"{router.url}/healthz") as r:
                assert r.status == 200
            async with s.get(f"{router.url}/readyz") as r:
                assert r.status == 200, await r.text()
    finally:
        await r1.cleanup()


async def test_admin_auth_and_live_change(echo_pair: Any, tmp_path: Path, redis_url: str) -> None:
    champ, chall = echo_pair
    cfg = make_config(config_dict(champ, chall, redis_url, tmp=tmp_path))
    async with (
        InProcessRouter(cfg, tmp_path / "run", redis_url) as router,
        aiohttp.ClientSession() as s,
    ):
        for token in (None, "wrong"):
            status, doc = await get_json(s, f"{router.url}/_router/state", token=token)
            assert status == 401 and "token" in doc["error"]
        status, doc = await get_json(s, f"{router.url}/_router/state")
        assert status == 200 and doc["state"]["split"] == 0.0
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with s.post(f"{router.url}/_router/experiment", json={"split": 7}, headers=auth) as r:
            assert r.status == 400
        async with s.post(
            f"{router.url}/_router/experiment", json={"split": 1.0, "note": "t"}, headers=auth
        ) as r:
            assert r.status == 200
            assert (await r.json())["state"]["version"] == 2
        async with s.post(f"{router.url}/p", headers={"X-User-Id": "z"}) as r:
            assert r.headers["X-Router-Variant"] == "challenger"
        async with s.get(f"{router.url}/metrics") as r:
            text = await r.text()
        m = parse_metrics(text)
        assert metric_sum(m, "router_requests_total", variant="challenger", status_class="2xx") == 1
        for name in (
            "router_upstream_latency_seconds_bucket",
            "router_request_duration_seconds_count",
            "router_in_flight_requests",
            "router_capture_queued_total",
            "router_shadow_dropped_total",
            "router_control_changes_total",
        ):
            assert any(k.startswith(name) for k in m), name


async def test_promotion_endpoint_without_an_injected_view_is_503_naming_why(
    echo_pair: Any, tmp_path: Path, redis_url: str
) -> None:
    """The sidecar never imports the promotion package: ``router serve`` injects the view. A
    router started without one answers ``/promotion`` with 503 and says so; with one, the
    view's answer (and None -> 404) goes through unchanged."""
    champ, chall = echo_pair
    cfg = make_config(config_dict(champ, chall, redis_url, tmp=tmp_path))
    async with InProcessRouter(cfg, tmp_path / "run", redis_url) as router, aiohttp.ClientSession(
    ) as s:  # fmt: skip
        status, doc = await get_json(s, f"{router.url}/_router/promotion?experiment=t")
        assert status == 503, doc
        assert doc["error"] == "promotion view unavailable" and "router serve" in doc["detail"]

    asked: list[tuple[str, str]] = []

    async def view(url: str, experiment: str) -> dict[str, Any] | None:
        asked.append((url, experiment))
        return {"state": {"stage": "shadow"}} if experiment == "t" else None

    async with InProcessRouter(
        cfg, tmp_path / "run2", redis_url, promotion_view=view
    ) as router, aiohttp.ClientSession() as s:  # fmt: skip
        status, doc = await get_json(s, f"{router.url}/_router/promotion?experiment=t")
        assert (status, doc) == (200, {"state": {"stage": "shadow"}})
        status, doc = await get_json(s, f"{router.url}/_router/promotion?experiment=nope")
        assert status == 404 and doc["error"] == "no promotion state for experiment 'nope'"
    assert asked == [(redis_url, "t"), (redis_url, "nope")]


async def test_outcomes_endpoint(echo_pair: Any, tmp_path: Path, redis_url: str) -> None:
    champ, chall = echo_pair
    cfg = make_config(config_dict(champ, chall, redis_url, tmp=tmp_path))
    async with (
        InProcessRouter(cfg, tmp_path / "run", redis_url) as router,
        aiohttp.ClientSession() as s,
    ):
        lines = b"\n".join(
            [
                b'{"request_id": "r1", "metric": "click", "value": 1}',
                b'{"unit": "u1", "metric": "revenue", "value": 9.5, "ts": 1700000000}',
                b"{broken",
                b'{"metric": "click", "value": 1}',
                b'{"request_id": "r2", "metric": "click", "value": "x"}',
            ]
        )
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with s.post(f"{router.url}/outcomes", data=lines, headers=auth) as r:
            assert r.status == 200
            doc = await r.json()
        assert doc["accepted"] == 2 and doc["rejected"] == 3
        assert [e["line"] for e in doc["errors"]] == [3, 4, 5]
        async with s.post(f"{router.url}/outcomes", data=b"{broken", headers=auth) as r:
            assert r.status == 400
        async with s.post(f"{router.url}/outcomes", data=lines) as r:
            assert r.status == 401
        assert await wait_for(lambda: len(read_stream(redis_url, "t:outcomes")) == 2)
    rows = read_stream(redis_url, "t:outcomes")
    assert rows[0]["request_id"] == "r1" and rows[1]["unit"] == "u1" and rows[1]["ts"] == 1700000000


async def test_dead_redis_is_survived_counted_and_reported(echo_pair: Any, tmp_path: Path) -> None:
    champ, chall = echo_pair
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    # (a fleet-shared live state would keep this router not ready: it has never seen Redis,
    # so it cannot know the ramp; tests/sidecar/test_fleet.py covers that)
    d = config_dict(champ, chall, dead_redis, tmp=tmp_path, mirror=1.0)
    cfg = make_config(dict(d, control=PER_PROCESS))
    async with (
        InProcessRouter(cfg, tmp_path / "run", dead_redis) as router,
        aiohttp.ClientSession() as s,
    ):
        for i in range(20):
            async with s.post(f"{router.url}/p", headers={"X-User-Id": f"u{i}"}) as r:
                assert r.status == 200  # the hot path never depends on Redis
        assert await wait_for(lambda: not router.app.writer.healthy, timeout=3)
        # records go to the local spool, so the router stays ready (Redis down is reported)
        spooled = lambda: router.app.metrics.counter_value("router_capture_spooled")  # noqa: E731
        assert await wait_for(lambda: spooled() >= 1, timeout=3)
        async with s.get(f"{router.url}/readyz") as r:
            assert r.status == 200
            capture = (await r.json())["checks"]["capture"]
            assert capture["ok"] is True and capture["redis"] is False and capture["spooling"]
            assert capture["error"] and capture["spool_bytes"] > 0
        m = await _metrics(s, router.url)
        assert metric_sum(m, "router_capture_errors_total") >= 1
        assert metric_sum(m, "router_capture_healthy") == 0
        assert metric_sum(m, "router_capture_spooled_total") >= 1


# ---- issue 12: an edge that holds -------------------------------------------------------------
Answer = Callable[[bytes, bytes], bytes | None]


@contextlib.asynccontextmanager
async def raw_upstream(answer: Answer) -> AsyncIterator[tuple[str, list[tuple[bytes, bytes]]]]:
    """A byte-level upstream: ``answer(head, body)`` is written back (None: close instead);
    every request it read is in the list."""
    seen: list[tuple[bytes, bytes]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    k, _, v = line.partition(b":")
                    if k.strip().lower() == b"content-length":
                        length = int(v)
                body = await reader.readexactly(length)
                seen.append((head, body))
                out = answer(head, body)
                if out is None:
                    return
                writer.write(out)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", seen
    finally:
        server.close()


async def raw_call(port: int, data: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
    """One request on its own connection (``Connection: close`` is the caller's)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = [(k.strip().lower(), v.strip()) for k, _, v in (x.partition(":") for x in lines[1:])]
    return int(lines[0].split()[1]), headers, body


def _ok_json(doc: dict[str, Any], extra: bytes = b"") -> bytes:
    body = orjson.dumps(doc)
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n%sContent-Length: %d\r\n\r\n%s"
        % (extra, len(body), body)
    )


async def test_item1_request_id_is_capped_and_validated(
    echo_pair: Any, tmp_path: Path, redis_url: str
) -> None:
    champ, chall = echo_pair
    cfg = make_config(config_dict(champ, chall, redis_url, tmp=tmp_path))
    cases = [
        (b"x" * 10_000, "invalid"),  # 10 KiB: not echoed, not stored
        (b"a" * 129, "invalid"),
        (b"has space", "invalid"),
        (b"caf\xc3\xa9", "invalid"),  # not ASCII
        (b"tab\there", "invalid"),  # a control character
        (b"", "empty"),  # item 6: an empty id counts as missing
    ]
    async with InProcessRouter(cfg, tmp_path / "run", redis_url) as router:
        answered: list[str] = []
        for given, _ in cases:
            status, headers, body = await raw_call(
                router.port,
                b"POST /p HTTP/1.1\r\nHost: r\r\nX-User-Id: u\r\nX-Request-Id: " + given
                + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )  # fmt: skip
            assert status == 200
            ids = [v for k, v in headers if k == "x-request-id"]
            assert len(ids) == 1 and ids[0] != given.decode("latin-1")
            assert 0 < len(ids[0]) <= 128
            seen = [v for k, v in orjson.loads(body)["headers"] if k.lower() == "x-request-id"]
            assert seen == ids  # the upstream got the generated id, not the client's
            answered.append(ids[0])
        # a valid id is kept end to end
        status, headers, body = await raw_call(
            router.port,
            b"GET /p HTTP/1.1\r\nHost: r\r\nX-Request-Id: req-1.2_3:A~\r\n"
            b"Connection: close\r\n\r\n",
        )
        assert [v for k, v in headers if k == "x-request-id"] == ["req-1.2_3:A~"]
        answered.append("req-1.2_3:A~")
        assert await wait_for(lambda: len(read_stream(redis_url, "t:pairs")) == len(answered))
        m = router.app.metrics
        assert m.counter_value("router_request_ids_replaced", ("invalid",)) == 5
        assert m.counter_value("router_request_ids_replaced", ("empty",)) == 1
    assert sorted(r["request_id"] for r in read_stream(redis_url, "t:pairs")) == sorted(answered)


async def test_item4_trailers_never_become_headers(tmp_path: Path, redis_url: str) -> None:
    trailer_answer = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'e\r\n{"score": 0.5}\r\n0\r\nSet-Cookie: session=evil\r\n\r\n'
    )
    async with raw_upstream(lambda h, b: trailer_answer) as (champ, seen):
        cfg = make_config(config_dict(champ, champ, redis_url, tmp=tmp_path))
        async with InProcessRouter(cfg, tmp_path / "run", redis_url) as router:
            status, headers, body = await raw_call(
                router.port,
                b"POST /p HTTP/1.1\r\nHost: r\r\nX-User-Id: alice\r\nTransfer-Encoding: chunked\r\n"
                b"Connection: close\r\n\r\n2\r\n{}\r\n0\r\nX-User-Id: victim\r\n"
                b"Authorization: Bearer stolen\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n",
            )
            # a chunked answer is streamed through, chunked to the client, trailers dropped
            assert status == 200 and body == b'e\r\n{"score": 0.5}\r\n0\r\n\r\n'
            assert dict(headers)["transfer-encoding"] == "chunked"
            assert "set-cookie" not in dict(headers)
            ((head, fwd_body),) = seen
            assert fwd_body == b"{}" and b"victim" not in head and b"stolen" not in head
            assert b"6.6.6.6" not in head and b"Transfer-Encoding" not in head
            assert await wait_for(lambda: len(read_stream(redis_url, "t:pairs")) == 1)
            m = router.app.metrics
            assert m.counter_value("router_trailers_dropped", ("request",)) == 1
            assert m.counter_value("router_trailers_dropped", ("response",)) == 1
    (rec,) = read_stream(redis_url, "t:pairs")
    assert rec["unit"] == "alice"


async def test_item5_post_lost_after_sending_is_502_not_resent(
    tmp_path: Path, redis_url: str
) -> None:
    answers = iter([_ok_json({"score": 1}), None])  # answer the first, read+close on the second
    async with raw_upstream(lambda h, b: next(answers, None)) as (champ, seen):
        cfg = make_config(config_dict(champ, champ, redis_url, tmp=tmp_path))
        async with (
            InProcessRouter(cfg, tmp_path / "run", redis_url) as router,
            aiohttp.ClientSession() as s,
        ):
            async with s.get(f"{router.url}/p") as r:
                assert r.status == 200
            async with s.post(f"{router.url}/p", data=b"charge-card") as r:
                assert r.status == 502
                assert "not retried" in (await r.json())["detail"]
            m = router.app.metrics
            assert m.counter_value("router_upstream_errors", ("champion", "served", "not_retried"))
        assert [b for _, b in seen] == [b"", b"charge-card"]  # the POST reached it once


async def test_item6_router_id_and_variant_replace_the_upstreams(
    tmp_path: Path, redis_url: str
) -> None:
    own = b"X-Request-Id: upstream-id\r\nX-Router-Variant: upstream\r\nX-Router-Fallback: x\r\n"
    async with raw_upstream(lambda h, b: _ok_json({"score": 1}, own)) as (champ, _):
        cfg = make_config(config_dict(champ, champ, redis_url, tmp=tmp_path))
        async with (
            InProcessRouter(cfg, tmp_path / "run", redis_url) as router,
            aiohttp.ClientSession() as s,
        ):
            async with s.get(f"{router.url}/p", headers={"X-Request-Id": "client-1"}) as r:
                assert r.headers.getall("X-Request-Id") == ["client-1"]
                assert r.headers.getall("X-Router-Variant") == ["champion"]
                assert "X-Router-Fallback" not in r.headers


async def test_item7_shadow_answers_are_bounded_and_marked_truncated(
    tmp_path: Path, redis_url: str
) -> None:
    big = orjson.dumps({"score": 0.9, "pad": "p" * (3 * 1024 * 1024)})
    async with (
        raw_upstream(lambda h, b: _ok_json({"score": 0.1})) as (champ, _),
        raw_upstream(lambda h, b: _ok_json(orjson.loads(big))) as (chall, _),
    ):
        d = config_dict(champ, chall, redis_url, tmp=tmp_path, mirror=1.0)
        d["limits"]["shadow_max_response_bytes"] = 65536
        async with (
            InProcessRouter(make_config(d), tmp_path / "run", redis_url) as router,
            aiohttp.ClientSession() as s,
        ):
            for i in range(3):
                async with s.post(f"{router.url}/p", headers={"X-User-Id": f"u{i}"}) as r:
                    assert r.status == 200
            assert await wait_for(lambda: len(read_stream(redis_url, "t:pairs")) == 3)
            m = router.app.metrics
            assert m.counter_value("router_shadow_truncated", ("challenger",)) == 3
    for rec in read_stream(redis_url, "t:pairs"):
        side = rec["challenger"]
        assert side["truncated"] is True and side["response_bytes"] == len(big)
        assert side["status"] == 200 and side["latency_ms"] > 0 and side["prediction"] is None
        assert "truncated" not in rec["champion"]  # only a truncated side carries the keys
        assert rec["champion"]["prediction"] == 0.1


async def test_item9_client_shadow_marker_stripped_and_upstream_101_is_502(
    tmp_path: Path, redis_url: str
) -> None:
    upgrade = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    )
    async with (
        raw_upstream(lambda h, b: _ok_json({"score": 1})) as (champ, seen),
        raw_upstream(lambda h, b: upgrade) as (switching, _),
    ):
        cfg = make_config(
            dict(config_dict(champ, champ, redis_url, tmp=tmp_path), control=PER_PROCESS)
        )
        async with (
            InProcessRouter(cfg, tmp_path / "run", redis_url) as router,
            aiohttp.ClientSession() as s,
        ):
            async with s.get(f"{router.url}/p", headers={"X-Shadow-Request": "1"}) as r:
                assert r.status == 200
            assert b"x-shadow-request" not in seen[0][0].lower()
        cfg = make_config(
            dict(config_dict(switching, switching, redis_url, tmp=tmp_path), control=PER_PROCESS)
        )
        async with (
            InProcessRouter(cfg, tmp_path / "run2", redis_url) as router,
            aiohttp.ClientSession() as s,
        ):
            async with s.get(f"{router.url}/p") as r:
                assert r.status == 502
                assert "101" in (await r.json())["detail"]
