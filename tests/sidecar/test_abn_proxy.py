"""A/B/n in the running sidecar: real upstream servers for the champion and every challenger,
a real Redis; split, shadow fan-out, forced variants and shadow budgets."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from router.analysis import build_report
from router.config import parse_config
from router.sidecar.assign import bucket, initial_layout, owner_table
from tests.helpers import (
    InProcessRouter,
    config_dict,
    echo_app,
    metric_sum,
    parse_metrics,
    read_stream,
    start_app,
    wait_for,
)

FORCE_TOKEN = "force-token-for-tests"


@contextlib.asynccontextmanager
async def _servers(*names: str) -> AsyncIterator[dict[str, str]]:
    runners: list[web.AppRunner] = []
    urls: dict[str, str] = {}
    try:
        for name in names:
            runner, url = await start_app(echo_app(name))
            runners.append(runner)
            urls[name] = url
        yield urls
    finally:
        for r in runners:
            await r.cleanup()


def _abn_config(
    urls: dict[str, str], redis_url: str, tmp: Path, challengers: list[dict[str, Any]], **exp: Any
) -> Any:
    d = config_dict(urls["champion"], urls["champion"], redis_url, tmp=tmp, **exp)
    del d["challenger"]
    d["experiment"].pop("split")
    d["experiment"].pop("mirror")
    d["challengers"] = [
        {"url": urls[c["name"]], "version": f"v-{c['name']}", "timeout": 2.0, **c}
        for c in challengers
    ]
    d["admin"]["force_token_env"] = "ROUTER_TEST_FORCE_TOKEN"
    return parse_config(d, "test")


async def _metrics(s: aiohttp.ClientSession, url: str) -> dict[str, float]:
    async with s.get(f"{url}/metrics") as r:
        return parse_metrics(await r.text())


async def test_three_challengers_split_by_the_layout(tmp_path: Path, redis_url: str) -> None:
    shares = {"a": 0.2, "b": 0.3, "c": 0.1}
    async with _servers("champion", *shares) as urls:
        cfg = _abn_config(urls, redis_url, tmp_path,
                          [{"name": k, "split": v} for k, v in shares.items()])  # fmt: skip
        table = owner_table(initial_layout(list(shares.items())), list(shares))
        names = ["champion", *shares]
        units = [f"user-{i}" for i in range(300)]
        async with (
            InProcessRouter(cfg, tmp_path / "run", redis_url) as router,
            aiohttp.ClientSession() as s,
        ):
            for u in units:
                async with s.post(f"{router.url}/p", headers={"X-User-Id": u}) as r:
                    expected = names[table[bucket("test-salt", u)]]
                    assert r.headers["X-Router-Variant"] == expected
                    assert (await r.json())["name"] == expected
            assert await wait_for(lambda: len(read_stream(redis_url, "t:pairs")) == len(units))
        recs = read_stream(redis_url, "t:pairs")
    seen = set()
    for rec in recs:
        expected = names[table[rec["bucket"]]]
        seen.add(expected)
        if expected == "champion":
            assert rec["served"] == "champion" and "variant" not in rec
        else:
            assert rec["served"] == "challenger" and rec["variant"] == expected
            assert rec["arm"] == expected and rec["challenger"]["version"] == f"v-{expected}"
    assert seen == set(names)


async def test_mirror_fans_out_to_every_challenger_in_its_share(
    tmp_path: Path, redis_url: str
) -> None:
    async with _servers("champion", "a", "b") as urls:
        cfg = _abn_config(urls, redis_url, tmp_path,
                          [{"name": "a", "mirror": 1.0}, {"name": "b", "mirror": 1.0}])  # fmt: skip
        async with (
            InProcessRouter(cfg, tmp_path / "run", redis_url) as router,
            aiohttp.ClientSession() as s,
        ):
            for i in range(40):
                async with s.post(f"{router.url}/p", headers={"X-User-Id": f"u{i}"}) as r:
                    assert r.headers["X-Router-Variant"] == "champion"
            assert await wait_for(lambda: len(read_stream(redis_url, "t:pairs")) == 40)
            m = await _metrics(s, router.url)
        recs = read_stream(redis_url, "t:pairs")
    assert metric_sum(m, "router_shadow_dispatched_total", variant="a") == 40
    assert metric_sum(m, "router_shadow_dispatched_total", variant="b") == 40
    for rec in recs:  # one record per request, with both shadows
        assert rec["mirrored"] is True and rec["arm"] == "a"
        assert rec["challenger"]["prediction"] == 0.75 and rec["challenger"]["status"] == 200
        assert rec["shadows"]["b"]["status"] == 200 and rec["shadows"]["b"]["version"] == "v-b"


async def test_forced_variants(tmp_path: Path, redis_url: str) -> None:
    os.environ["ROUTER_TEST_FORCE_TOKEN"] = FORCE_TOKEN
    async with _servers("champion", "a", "b") as urls:
        cfg = _abn_config(urls, redis_url, tmp_path,
                          [{"name": "a", "mirror": 1.0}, {"name": "b"}],
                          force_units=["qa-user"])  # fmt: skip
        async with (
            InProcessRouter(cfg, tmp_path / "run", redis_url) as router,
            aiohttp.ClientSession() as s,
        ):
            url = f"{router.url}/p"
            # a valid token: answered by the forced variant, not mirrored, marked forced
            h = {"X-User-Id": "u1", "X-Router-Force": "b", "X-Router-Force-Token": FORCE_TOKEN}
            async with s.post(url, headers=h) as r:
                body = await r.json()
                assert r.headers["X-Router-Variant"] == "b" and body["name"] == "b"
                sent = {k.lower() for k, _ in body["headers"]}
                assert "x-router-force" not in sent and "x-router-force-token" not in sent
            # a unit on the allow-list needs no token
            async with s.post(url, headers={"X-User-Id": "qa-user", "X-Router-Force": "a"}) as r:
                assert r.headers["X-Router-Variant"] == "a"
            # no token: the header is stripped, counted, and the request routed as usual
            for bad in ({}, {"X-Router-Force-Token": "wrong"}):
                h = {"X-User-Id": "u2", "X-Router-Force": "b", **bad}
                async with s.post(url, headers=h) as r:
                    assert r.status == 200 and r.headers["X-Router-Variant"] == "champion"
                    sent = {k.lower() for k, _ in (await r.json())["headers"]}
                    assert "x-router-force" not in sent and "x-router-force-token" not in sent
            # an unknown variant with a valid token: 400 naming the header and the variants
            h = {"X-User-Id": "u3", "X-Router-Force": "zz", "X-Router-Force-Token": FORCE_TOKEN}
            async with s.post(url, headers=h) as r:
                assert r.status == 400
                err = await r.json()
                assert "X-Router-Force" in err["error"] and err["known"] == ["champion", "a", "b"]
            assert await wait_for(lambda: len(read_stream(redis_url, "t:pairs")) == 4)
            m = await _metrics(s, router.url)
        recs = {r["unit"] + str(r.get("forced")): r for r in read_stream(redis_url, "t:pairs")}
    assert metric_sum(m, "router_forced_requests_total", outcome="honoured") == 2
    assert metric_sum(m, "router_forced_requests_total", outcome="rejected") == 2
    assert metric_sum(m, "router_forced_requests_total", outcome="unknown_variant") == 1
    forced = recs["u1True"]
    assert forced["variant"] == "b" and forced["mirrored"] is False and forced["champion"] is None
    assert recs["qa-userTrue"]["variant"] == "a"
    assert recs["u2None"]["served"] == "champion" and recs["u2None"]["mirrored"] is True


@pytest.mark.parametrize("max_rps", [5.0])
async def test_shadow_budget_caps_mirroring_by_unit_hash(
    tmp_path: Path, redis_url: str, max_rps: float
) -> None:
    async with _servers("champion", "a") as urls:
        cfg = _abn_config(urls, redis_url, tmp_path,
                          [{"name": "a", "mirror": 1.0, "mirror_max_rps": max_rps}])  # fmt: skip
        async with (
            InProcessRouter(cfg, tmp_path / "run", redis_url) as router,
            aiohttp.ClientSession() as s,
        ):
            n = 0
            t_end = time.monotonic() + 3.2
            while time.monotonic() < t_end:
                async with s.post(f"{router.url}/p", headers={"X-User-Id": f"u{n}"}) as r:
                    assert r.status == 200
                n += 1
            assert await wait_for(lambda: len(read_stream(redis_url, "t:pairs")) == n)
            m = await _metrics(s, router.url)
            budget = router.app.budgets["a"]
        recs = read_stream(redis_url, "t:pairs")
    mirrored = sum(r["mirrored"] for r in recs)
    # 3.2 s at 5/s plus one second of burst
    assert mirrored <= max_rps * 4.2 + 1, (mirrored, n)
    assert n > 100  # the traffic was well above the budget
    cut = metric_sum(m, "router_shadow_dropped_total", reason="budget")
    burst = metric_sum(m, "router_shadow_dropped_total", reason="budget_burst")
    assert cut + burst + mirrored == n
    assert cut > 0 and budget.factor < 1.0  # the hash layer took over after the first tick
    skipped = [r["mirror_skipped"]["a"] for r in recs if not r["mirrored"]]
    assert set(skipped) <= {"budget", "budget_burst"} and len(skipped) == n - mirrored
    # the report's coverage numbers show the budget's cut
    cov = build_report(recs, [], experiment="t")["counts"]["mirror_coverage"]
    assert cov["mirrored_pairs"] == {"a": mirrored}
    assert cov["skipped"]["a"].get("budget", 0) == cut
    assert cov["skipped"]["a"].get("budget_burst", 0) == burst
    assert cov["coverage"]["a"] == pytest.approx(mirrored / n)
