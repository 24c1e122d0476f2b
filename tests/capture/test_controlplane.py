"""The shared control plane on a real Redis: compare-and-set of the live state, audit chain and
outbox in one script, no-op changes, concurrent writers, the last known state's origin."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from router.capture.controlplane import ControlPlane, LiveConflict
from router.promotion.audit import verify_chain
from router.promotion.store import PromotionStore
from router.sidecar.fleet import LastKnown, redis_origin

PIN = {"url": "http://127.0.0.1:1", "version": "a"}


async def test_live_state_compare_and_set_audit_and_outbox(redis_url: str) -> None:
    r = aioredis.Redis.from_url(redis_url)
    plane = ControlPlane(r, "exp")
    try:
        first = await plane.change_live(
            {"split": 0.0, "mirror": 0.0, "champion": PIN, "challenger": PIN},
            expected=0, actor="router@a", note="bootstrap", event="live_created",
        )  # fmt: skip
        assert first.live is not None and first.live["version"] == 1
        with pytest.raises(LiveConflict) as info:  # a second bootstrap loses
            await plane.change_live({"split": 0.5}, expected=0, actor="router@b")
        assert info.value.current is not None and info.value.current["version"] == 1
        # a change based on a stale version is refused with the current one
        await plane.change_live({"split": 0.1}, expected=1, actor="admin@x", note="step 1")
        with pytest.raises(LiveConflict) as info:
            await plane.change_live({"split": 0.2}, expected=1, actor="admin@y")
        assert info.value.current is not None and info.value.current["split"] == 0.1
        # the values already there: no new version, nothing audited
        same = await plane.change_live({"split": 0.1}, expected=2, actor="admin@z")
        assert same.records == [] and (await plane.read_live())["version"] == 2  # type: ignore[index]
        assert await r.hlen(plane.keys.outbox) == 0  # no receivers yet: no outbox entries
        await r.set(plane.keys.webhooks, b'{"urls": ["http://127.0.0.1:1/hook"]}')
        await plane.change_live({"mirror": 1.0}, expected=None, actor="admin@x")
        assert await r.hlen(plane.keys.outbox) == 1
        recs = await PromotionStore(r, "exp").records()
        assert [x["event"] for x in recs if x] == ["live_created", "live_changed", "live_changed"]
        assert recs[1]["actor"] == "admin@x" and recs[1]["data"]["changes"] == {"split": 0.1}  # type: ignore[index]
        assert verify_chain(recs, await PromotionStore(r, "exp").head()) == []
    finally:
        await r.aclose()


async def test_concurrent_writers_keep_one_chain(redis_url: str) -> None:
    clients = [aioredis.Redis.from_url(redis_url) for _ in range(4)]
    try:
        planes = [ControlPlane(c, "exp") for c in clients]
        await planes[0].change_live({"split": 0.0}, expected=0, actor="boot")
        await asyncio.gather(*(
            p.change_live({"mirror": (i + 1) / 10}, expected=None, actor=f"w{i}")
            for i, p in enumerate(planes)
        ))  # fmt: skip
        live = await planes[0].read_live()
        assert live is not None and live["version"] == 5
        store = PromotionStore(clients[0], "exp")
        recs = await store.records()
        assert len(recs) == 5 and verify_chain(recs, await store.head()) == []
    finally:
        for c in clients:
            await c.aclose()


def test_last_known_state_is_used_only_with_the_redis_it_came_from(tmp_path: Path) -> None:
    path = tmp_path / "t.live.json"
    here = redis_origin("redis://:secret@10.0.0.1:6379/0")
    assert "secret" not in here
    LastKnown(path, here).save({"version": 7, "split": 0.25})
    assert LastKnown(path, here).load() == {"version": 7, "split": 0.25}
    assert LastKnown(path, redis_origin("redis://10.0.0.2:6379/0")).load() is None
    assert LastKnown(tmp_path / "missing.json", here).load() is None
