"""Live A/B/n changes (admin API add / remove / re-weight) and expiry, in the running sidecar
against real upstream servers and a real Redis."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from router.config import parse_config
from router.sidecar.app import initial_state
from router.sidecar.challengers import ChangeError, apply_change, expiry_deadline
from tests.helpers import (
    TOKEN,
    InProcessRouter,
    ServeProcess,
    get_json,
    metric_sum,
    parse_metrics,
)
from tests.sidecar.test_abn_proxy import _abn_config, _servers

AUTH = {"Authorization": f"Bearer {TOKEN}"}
UNITS = [f"user-{i}" for i in range(200)]


async def _variants(s: aiohttp.ClientSession, url: str) -> dict[str, str]:
    out = {}
    for u in UNITS:
        async with s.post(f"{url}/p", headers={"X-User-Id": u}) as r:
            assert r.status == 200
            out[u] = r.headers["X-Router-Variant"]
    return out


async def _change(s: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with s.post(f"{url}/_router/challengers", json=body, headers=AUTH) as r:
        return r.status, await r.json()


async def test_add_reweight_remove_move_only_the_changed_challenger(
    tmp_path: Path, redis_url: str
) -> None:
    async with _servers("champion", "a", "b", "c") as urls:
        cfg = _abn_config(urls, redis_url, tmp_path,
                          [{"name": "a", "split": 0.2}, {"name": "b", "split": 0.2}])  # fmt: skip
        async with (
            InProcessRouter(cfg, tmp_path / "run", redis_url) as router,
            aiohttp.ClientSession() as s,
        ):
            url = router.url
            before = await _variants(s, url)
            assert {"champion", "a", "b"} <= set(before.values())

            status, view = await _change(s, url, {"op": "add", "note": "try c", "challenger": {
                "name": "c", "url": urls["c"], "version": "v-c", "split": 0.2}})  # fmt: skip
            assert status == 200 and [c["name"] for c in view["challengers"]] == ["a", "b", "c"]
            added = await _variants(s, url)
            for u in UNITS:  # only champion units move, and only to c
                assert added[u] == before[u] or (before[u], added[u]) == ("champion", "c")
            assert "c" in added.values()

            status, _ = await _change(s, url, {"op": "update", "name": "a", "split": 0.35})
            assert status == 200
            raised = await _variants(s, url)
            for u in UNITS:
                assert raised[u] == added[u] or (added[u], raised[u]) == ("champion", "a")

            status, _ = await _change(s, url, {"op": "update", "name": "a", "split": 0.1})
            lowered = await _variants(s, url)
            for u in UNITS:
                assert lowered[u] == raised[u] or (raised[u], lowered[u]) == ("a", "champion")

            status, _ = await _change(s, url, {"op": "remove", "name": "b"})
            assert status == 200
            removed = await _variants(s, url)
            for u in UNITS:
                expected = "champion" if lowered[u] == "b" else lowered[u]
                assert removed[u] == expected

            # the change is in the live state every worker polls
            state = router.app.state
            assert [c.name for c in state.challengers] == ["a", "c"]
            assert state.updated_by.startswith("admin@")
            # ... which is the fleet's shared live state in Redis (audited there)
            assert router.app.fleet is not None
            doc = await router.app.fleet.plane.read_live()
            assert [c["name"] for c in doc["challengers"]] == ["a", "c"]
            assert doc["version"] == state.version

            # bad changes: 400 naming the field; nothing applied
            bad = [
                ({"op": "add", "challenger": {"name": "a", "url": urls["a"], "version": "x"}},
                 "challengers[2].name: 'a' is already the name of challengers[0]"),
                ({"op": "add", "challenger": {"name": "d", "url": urls["a"], "version": "x",
                                              "split": 0.9}}, "challengers[2].split: the split"),
                ({"op": "add", "challenger": {"name": "d", "url": "ftp://x", "version": "x"}},
                 "challenger.url: "),
                ({"op": "update", "name": "zz", "split": 0.1}, "name: no challenger named 'zz'"),
                ({"op": "update", "name": "a", "split": 2}, "challenger.split: "),
                ({"op": "update", "name": "a"}, "nothing to change"),
                ({"op": "rename"}, "op: must be one of"),
            ]  # fmt: skip
            version = router.app.state.version
            for body, words in bad:
                status, err = await _change(s, url, body)
                assert status == 400, body
                assert err["detail"].startswith(words) or words in err["detail"], err
            assert router.app.state.version == version
            async with s.post(
                f"{url}/_router/challengers", json={"op": "remove", "name": "a"}
            ) as r:
                assert r.status == 401  # the admin token is required
            async with s.get(f"{url}/metrics") as r:
                m = parse_metrics(await r.text())
            assert metric_sum(m, "router_admin_changes_total", outcome="rejected") == len(bad)
            assert metric_sum(m, "router_admin_changes_total", outcome="applied") == 4


async def test_expiry_returns_everything_to_the_champion(tmp_path: Path, redis_url: str) -> None:
    async with _servers("champion", "a", "b") as urls:
        cfg = _abn_config(urls, redis_url, tmp_path,
                          [{"name": "a", "split": 0.5, "mirror": 1.0}, {"name": "b", "split": 0.5}],
                          max_duration_s=1.0)  # fmt: skip
        async with (
            InProcessRouter(cfg, tmp_path / "run", redis_url) as router,
            aiohttp.ClientSession() as s,
        ):
            assert set((await _variants(s, router.url)).values()) == {"a", "b"}
            async with s.get(f"{router.url}/metrics") as r:
                mirrored_before = metric_sum(
                    parse_metrics(await r.text()), "router_shadow_dispatched_total"
                )
            assert mirrored_before > 0  # a's units mirrored to the champion
            await asyncio.sleep(1.8)
            assert set((await _variants(s, router.url)).values()) == {"champion"}
            assert router.app.state.expired and router.app.state.updated_by == "expiry"
            assert "expired at" in router.app.state.note
            assert not router.app.mirror_any
            async with s.get(f"{router.url}/metrics") as r:
                m = parse_metrics(await r.text())
            assert metric_sum(m, "router_experiment_expired_total") == 1
            assert metric_sum(m, "router_shadow_dispatched_total") == mirrored_before
            # an admin may re-open it
            async with s.post(f"{router.url}/_router/experiment", headers=AUTH,
                              json={"expired": False, "note": "one more day"}) as r:  # fmt: skip
                assert r.status == 200
            assert not router.app.state.expired


def test_expiry_deadline_and_pure_changes() -> None:
    cfg = parse_config({
        "champion": {"url": "http://h:1", "version": "c"},
        "challengers": [{"name": "a", "url": "http://h:2", "version": "a", "split": 0.5}],
        "experiment": {"name": "e", "salt": "s", "expires_at": "2030-01-01T00:00:00Z",
                       "max_duration_s": 3600},
    })  # fmt: skip
    assert expiry_deadline(cfg.experiment, 1_000.0) == 4_600.0
    assert expiry_deadline(cfg.experiment, 2e9) == 1_893_456_000.0  # 2030-01-01
    state = initial_state(cfg)
    with pytest.raises(ChangeError, match=r"^name: the last challenger cannot be removed"):
        apply_change(state, {"op": "remove", "name": "a"})
    with pytest.raises(ChangeError, match=r"^challengers\[1\]\.split: the split shares sum"):
        b = {"name": "b", "url": "http://h:3", "version": "b", "split": 0.6}
        apply_change(state, {"op": "add", "challenger": b})
    updated = apply_change(state, {"op": "update", "name": "a", "version": "a2"})
    assert updated[0].version == "a2" and updated[0].extents == state.challengers[0].extents


async def test_a_live_change_reaches_every_worker_within_a_second(
    tmp_path: Path, redis_url: str
) -> None:
    async with _servers("champion", "a", "b") as urls:
        d = _abn_config(
            urls, redis_url, tmp_path, [{"name": "a", "split": 0.1}, {"name": "b", "split": 0.1}]
        ).model_dump()
        router = ServeProcess(d, tmp_path, workers=2).start()
        try:
            async with aiohttp.ClientSession() as s:
                status, view = await _change(
                    s, router.url, {"op": "update", "name": "b", "split": 0.3}
                )
                assert status == 200
                version = view["version"]
                t0 = time.monotonic()
                pids: set[int] = set()
                # every worker answers with the new version within a second (a new connection
                # per request, so the kernel spreads them over the workers)
                while time.monotonic() - t0 < 1.0 or len(pids) < 2:
                    async with aiohttp.ClientSession() as fresh:
                        st, state = await get_json(fresh, f"{router.url}/_router/state")
                    assert st == 200
                    pids.add(state["worker"]["pid"])
                    if time.monotonic() - t0 > 1.0:
                        assert state["state"]["version"] == version, state["worker"]
                    assert time.monotonic() - t0 < 10, "only one worker answered"
                assert len(pids) == 2
        finally:
            assert router.stop() == 0


async def test_live_challengers_stay_within_the_descriptors_reserved_at_start(
    tmp_path: Path, redis_url: str
) -> None:
    """A worker reserves file descriptors at start for ``limits.max_challengers`` challengers'
    pools: a live add beyond that many, or a pool size whose pools no longer fit what was
    reserved, is refused with 400 naming the limit, and nothing changes."""
    from router.config import ConfigError
    from tests.sidecar.test_abn_proxy import _abn_config as abn

    async with _servers("champion", "a", "b", "c") as urls:
        two = [{"name": "a", "split": 0.2}, {"name": "b", "split": 0.2}]
        base = abn(urls, redis_url, tmp_path, two).model_dump(mode="json", by_alias=True)
        base.pop("challenger", None)
        base["limits"]["max_challengers"] = 2
        cfg = parse_config(base, "test")
        with pytest.raises(ConfigError, match=r"limits\.max_challengers"):
            parse_config({**base, "challengers": [*base["challengers"], {
                **base["challengers"][0], "name": "c"}]}, "test")  # fmt: skip
        async with (
            InProcessRouter(cfg, tmp_path / "run", redis_url) as router,
            aiohttp.ClientSession() as s,
        ):
            status, body = await _change(s, router.url, {"op": "add", "challenger": {
                "name": "c", "url": urls["c"], "version": "v-c", "split": 0.1}})  # fmt: skip
            assert status == 400 and "limits.max_challengers" in body["detail"], body
            huge = {"op": "update", "name": "a", "pool_size": 4096}
            status, body = await _change(s, router.url, huge)
            assert status == 400 and "descriptors" in body["detail"], body
            status, view = await _change(s, router.url, {"op": "update", "name": "a",
                                                         "split": 0.25})  # fmt: skip
            assert status == 200 and [c["name"] for c in view["challengers"]] == ["a", "b"]
