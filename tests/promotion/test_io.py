"""Lease, atomic state+audit store, audit verify CLI, webhook delivery: against real Redis and a
real aiohttp receiver."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
import redis.asyncio as aioredis
from aiohttp import web

from router.cli import main as cli_main
from router.promotion import machine, outbox
from router.promotion.audit import canonical_json
from router.promotion.config import parse_promotion_config
from router.promotion.lease import Lease, LeaseHeld
from router.promotion.state import Pin, Transition
from router.promotion.store import LeaseLost, PromotionStore, audit_key
from router.promotion.webhooks import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookSender,
    verify_signature,
)
from tests.helpers import start_app


async def test_lease_excludes_a_second_holder_and_expires(redis_url: str) -> None:
    r = aioredis.Redis.from_url(redis_url)
    try:
        a = Lease(r, "exp", ttl_s=0.5)
        b = Lease(r, "exp", ttl_s=0.5)
        await a.acquire()
        assert a.valid
        with pytest.raises(LeaseHeld, match=a.token):
            await b.acquire(wait_s=0.1)
        assert await b.renew() is False  # token-checked: cannot extend someone else's lease
        assert await b.release() is False  # nor delete it
        assert await a.renew() is True
        assert await r.get(a.key) == a.token.encode()
        await asyncio.sleep(0.6)  # a crashed holder stops renewing: the lease expires
        await b.acquire(wait_s=0.5)
        assert await a.renew() is False and not a.valid
        assert await a.release() is False
        assert await b.release() is True
        assert await r.get(b.key) is None
    finally:
        await r.aclose()


def _start(now: float = 1000.0) -> Transition:
    cfg = parse_promotion_config({"steps": [{"split": 0.1, "min_duration_s": 1}]})
    return machine.start(
        experiment="exp",
        cfg=cfg,
        champion=Pin("http://a:1", "a1"),
        challenger=Pin("http://b:2", "b2"),
        routers=["http://r"],
        policy=None,
        actor="t",
        now=now,
    )


async def test_store_commits_state_and_chained_audit_atomically(
    redis_url: str, tmp_path: Path
) -> None:
    r = aioredis.Redis.from_url(redis_url)
    lease = Lease(r, "exp", ttl_s=5)
    await lease.acquire()
    store = PromotionStore(r, "exp", tmp_path)
    try:
        done = await store.update(
            lambda cur: _start() if cur is None else None, lease_token=lease.token
        )
        assert done is not None
        assert await store.update(lambda cur: _start() if cur is None else None) is None
        state = await store.load()
        assert state is not None and state.stage == "canary"
        verdict = {"action": "rollback", "reasons": ["bad"], "gates": []}
        await store.update(lambda cur: machine.on_verdict(cur, verdict, now=1001.0))  # type: ignore[arg-type]
        recs = await store.records()
        assert [x["event"] for x in recs if x] == ["step_changed", "rollback"]
        assert recs[1]["prev"] == recs[0]["hash"]  # type: ignore[index]
        assert recs[0]["versions"] == {"champion": "a1", "challenger": "b2"}  # type: ignore[index]
        assert store.mirror_records() == recs
        # fencing: once the lease is someone else's, commits are refused
        await lease.release()
        other = Lease(r, "exp", ttl_s=5)
        await other.acquire()
        with pytest.raises(LeaseLost):
            await store.update(lambda cur: None, lease_token=lease.token)
    finally:
        await r.aclose()


async def test_mirror_has_no_gap_when_another_writer_mirrors_first(
    redis_url: str, tmp_path: Path
) -> None:
    """Two writers of one audit (a controller and a CLI command): A commits record 0 and is
    slow to mirror it; B commits record 1 and mirrors first. The mirror must still end up
    holding both, in order (B fills the gap from Redis), not just record 0."""
    import threading

    r = aioredis.Redis.from_url(redis_url)
    a, b = PromotionStore(r, "exp", tmp_path), PromotionStore(r, "exp", tmp_path)
    gate = threading.Event()
    real = a.sync_mirror_records

    def slow(records: list[dict[str, Any]]) -> int:
        gate.wait(10)
        return real(records)

    a.sync_mirror_records = slow  # type: ignore[method-assign]
    try:
        first = asyncio.create_task(a.update(lambda cur: _start()))
        deadline = time.monotonic() + 10
        while len(await b.records()) < 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        verdict = {"action": "rollback", "reasons": ["bad"], "gates": []}
        await b.update(lambda cur: machine.on_verdict(cur, verdict, now=1001.0))  # type: ignore[arg-type]
        gate.set()
        await first
        recs = await b.records()
        assert len(recs) == 2
        assert b.mirror_records() == recs
    finally:
        gate.set()
        await r.aclose()


async def _cli(*args: str) -> tuple[int, str]:
    """Run ``router ARGS`` (it calls asyncio.run itself, so in a thread), capturing stdout."""
    import contextlib
    import io

    def call() -> tuple[int, str]:
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            code = cli_main(list(args))
        return code, buf.getvalue()

    return await asyncio.to_thread(call)


async def _audit_fixture(redis_url: str, tmp_path: Path) -> PromotionStore:
    r = aioredis.Redis.from_url(redis_url)
    store = PromotionStore(r, "exp", tmp_path)
    await store.update(lambda cur: _start())
    for i in range(3):
        v = {"action": "hold" if i == 0 else "continue", "reasons": [f"r{i}"], "gates": []}
        t0 = 1001.0 + i
        await store.update(lambda cur, v=v, t0=t0: machine.on_verdict(cur, v, now=t0))  # type: ignore[misc,arg-type]
    await store.update(
        lambda cur: machine.rollback(cur, actor="op", reasons=["manual"], now=1010.0)  # type: ignore[arg-type]
    )
    await r.aclose()
    return store


@pytest.mark.parametrize("tamper", ["edit", "delete", "insert", "truncate", "mirror"])
async def test_audit_verify_cli_detects_tampering(
    redis_url: str, tmp_path: Path, tamper: str
) -> None:
    await _audit_fixture(redis_url, tmp_path)
    mirror = str(tmp_path / "exp.audit.jsonl")
    code, out = await _cli(
        "audit", "verify", "--experiment", "exp", "--redis", redis_url, "--file", mirror
    )
    assert code == 0, out
    assert "audit intact: 3 records" in out
    code, shown = await _cli("audit", "show", "--experiment", "exp", "--redis", redis_url)
    assert code == 0 and "rollback" in shown and "reason: manual" in shown
    r = redis.Redis.from_url(redis_url)
    key = audit_key("exp")
    raw = [orjson.loads(x) for x in r.lrange(key, 0, -1)]
    if tamper == "edit":
        raw[1]["actor"] = "someone-else"
        r.lset(key, 1, canonical_json(raw[1]))
        expect = "record #1: edited"
    elif tamper == "delete":
        r.lrem(key, 1, canonical_json(raw[1]))
        expect = "deleted: seq 1 missing before seq 2"
    elif tamper == "insert":
        r.linsert(key, "BEFORE", canonical_json(raw[1]), canonical_json(raw[0]))
        expect = "inserted"
    elif tamper == "truncate":
        r.rpop(key)
        expect = "truncated"
    else:
        lines = Path(mirror).read_text().splitlines()
        doc = orjson.loads(lines[2])
        doc["data"]["reasons"] = ["nothing to see"]
        lines[2] = orjson.dumps(doc).decode()
        Path(mirror).write_text("\n".join(lines) + "\n")
        expect = "(mirror"
    r.close()
    code, out = await _cli(
        "audit", "verify", "--experiment", "exp", "--redis", redis_url, "--file", mirror
    )
    assert code == 1, out
    assert "AUDIT TAMPERED" in out and expect in out, out


async def test_webhook_receiver_failing_twice_gets_the_event_and_signature_verifies() -> None:
    got: list[tuple[dict[str, str], bytes]] = []
    attempts = 0

    async def hook(request: web.Request) -> web.Response:
        nonlocal attempts
        attempts += 1
        body = await request.read()
        if attempts <= 2:
            return web.Response(status=503)
        got.append((dict(request.headers), body))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner, url = await start_app(app)
    sender = WebhookSender([f"{url}/hook"], "whsec", max_attempts=4, backoff_initial_s=0.05)
    await sender.start()
    try:
        payload = {
            "id": "exp:7",
            "event": "rollback",
            "experiment": "exp",
            "ts": 1.0,
            "text": "[exp] rollback",
            "data": {"reasons": ["r"]},
        }
        t0 = time.monotonic()
        assert sender.submit(payload) == 1  # returns at once: delivery is in the background
        assert time.monotonic() - t0 < 0.01
        assert await sender.drain(5.0)
    finally:
        await sender.stop()
        await runner.cleanup()
    assert attempts == 3
    assert sender.counts == {"retried": 2, "delivered": 1}
    headers, body = got[0]
    assert orjson.loads(body) == payload
    assert headers[EVENT_HEADER] == "rollback" and headers[DELIVERY_HEADER] == "exp:7"
    assert verify_signature("whsec", body, headers[TIMESTAMP_HEADER], headers[SIGNATURE_HEADER])
    assert not verify_signature("wrong", body, headers[TIMESTAMP_HEADER], headers[SIGNATURE_HEADER])


async def test_webhook_failures_are_counted_and_full_queue_drops() -> None:
    sender = WebhookSender(
        ["http://127.0.0.1:9/unreachable"],
        "s",
        max_attempts=2,
        backoff_initial_s=0.01,
        queue_size=1,
        timeout_s=0.5,
    )
    counted: list[tuple[str, int]] = []
    sender._on_count = lambda name, n: counted.append((name, n))
    await sender.start()
    try:
        ev: dict[str, Any] = {"id": "1", "event": "hold", "experiment": "e", "ts": 0, "data": {}}
        sender.submit(ev)
        sender.submit(ev)  # the queue holds one: this one is dropped, not awaited
        await sender.drain(5.0)
    finally:
        await sender.stop()
    assert sender.counts == {"dropped": 1, "retried": 1, "failed": 1}
    assert ("failed", 1) in counted and ("dropped", 1) in counted


async def test_restarted_controller_resends_only_undelivered_webhooks(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from router.promotion.controller import Controller, ControllerOptions

    monkeypatch.setenv("ROUTER_WEBHOOK_SECRET", "k")
    got: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        h = request.headers
        assert verify_signature("k", body, h[TIMESTAMP_HEADER], h[SIGNATURE_HEADER])
        got.append(orjson.loads(body))
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner, url = await start_app(app)
    r = aioredis.Redis.from_url(redis_url)
    try:
        # a controller committed two transitions (each queued in the outbox with its audit
        # record), delivered the first webhook, then died
        cfg = parse_promotion_config(
            {
                "webhooks": {"urls": [f"{url}/hook"]},
                "routers": {"retries": 1, "timeout_s": 0.3},
                "audit": {"dir": str(tmp_path)},
            }
        )
        await outbox.publish_receivers(r, "exp", cfg.webhooks)
        store = PromotionStore(r, "exp", tmp_path)
        await store.update(lambda cur: _start())
        await store.update(
            lambda cur: machine.rollback(cur, actor="op", reasons=["x"], now=1001.0)  # type: ignore[arg-type]
        )
        assert [e["id"] for e in await outbox.entries(r, "exp")] == ["exp:0", "exp:1"]
        await r.hdel(store.keys.outbox, "exp:0")  # delivered before the crash
        opts = ControllerOptions(experiment="exp", redis_url=redis_url, cfg=cfg, routers=[])
        final = await Controller(opts, analyse=lambda *a, **k: {}).run()
        assert final.stage == "rolled_back"
        assert [(e["event"], e["id"]) for e in got] == [("rollback", "exp:1")]
        assert await outbox.entries(r, "exp") == []
        await Controller(opts, analyse=lambda *a, **k: {}).run()
        assert len(got) == 1  # nothing left to send
    finally:
        await r.aclose()
        await runner.cleanup()


async def test_router_fleet_compare_before_set_and_bad_token(
    redis_url: str, tmp_path: Path
) -> None:
    from router.promotion.routers import RouterFleet
    from router.promotion.state import Target
    from tests.helpers import TOKEN, InProcessRouter, config_dict, echo_app, make_config

    champ_runner, champ = await start_app(echo_app("champion"))
    chall_runner, chall = await start_app(echo_app("challenger"))
    cfg = make_config(config_dict(champ, chall, None, tmp=tmp_path))
    try:
        async with InProcessRouter(cfg, tmp_path / "run", None) as router:
            target = Target(0.25, 0.5, Pin(champ, "champ-1"), Pin(chall, "chall-9"))
            async with RouterFleet([router.url], TOKEN) as fleet:
                first = await fleet.reconcile(target)
                assert first[0].result == "applied"
                assert first[0].change == {
                    "split": 0.25,
                    "mirror": 0.5,
                    "challenger": {"url": chall, "version": "chall-9"},
                }
                version = (await fleet.get_state(router.url))["version"]
                again = await fleet.reconcile(target)
                assert again[0].result == "unchanged"
                assert (await fleet.get_state(router.url))["version"] == version
            async with RouterFleet([router.url], "wrong", retries=3) as bad:
                t0 = time.monotonic()
                res = await bad.reconcile(target)
                assert res[0].result == "error" and "401" in (res[0].error or "")
                assert time.monotonic() - t0 < 0.1  # a 4xx is not retried
    finally:
        await champ_runner.cleanup()
        await chall_runner.cleanup()


async def test_running_gate_state_is_kept_per_step(redis_url: str) -> None:
    """The controller's running intersection of the gates' confidence sequences lives in Redis,
    tagged with its step: another step never sees it."""
    r = aioredis.Redis.from_url(redis_url)
    try:
        store = PromotionStore(r, "runexp")
        step = ("canary", 1, 1000.0)
        assert await store.load_running(step) is None
        gates = {"error_rate_delta": {"ci": [-0.01, 0.004], "p_value": None, "looks": 3}}
        await store.save_running(step, gates)
        assert await store.load_running(step) == gates
        assert await store.load_running(("canary", 2, 2000.0)) is None
    finally:
        await r.aclose()


async def test_controller_reads_each_record_once_across_ticks(redis_url: str) -> None:
    """The fast guardrails fold the records stored since the previous read (per stream, after
    the last id): over several reads, every record of the step is counted exactly once."""
    from router.promotion.config import PromotionConfig
    from router.promotion.controller import Controller, ControllerOptions, StepGuard

    sync = redis.Redis.from_url(redis_url)
    rec = {"v": 1, "experiment": "inc", "ts": 1.0, "served": "champion", "mirrored": True,
           "champion": {"status": 200, "latency_ms": 5.0},
           "challenger": {"status": 503, "latency_ms": 1.0, "error": "x"}}  # fmt: skip
    ctl = Controller(ControllerOptions("inc", redis_url, PromotionConfig(), []))
    guard = StepGuard(("canary", 1, 0.0), since=0.0)
    try:
        total = 0
        for batch in (5, 0, 7, 3):
            for i in range(batch):
                sync.xadd("inc:pairs", {"r": orjson.dumps(dict(rec, request_id=f"{total + i}"))})
            total += batch
            guard.tallies.add(await ctl._read_new(guard))
            assert guard.tallies.records == total
        assert guard.tallies.champion.calls == total and guard.tallies.challenger.errors == total
    finally:
        if ctl._reader is not None:
            ctl._reader.close()
        sync.close()
