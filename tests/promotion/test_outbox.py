"""The webhook outbox on a real Redis and a real receiver: an undeliverable event stays visible
and is sent by the next deliverer; one deliverer at a time."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from aiohttp import web

from router.cli import main as cli_main
from router.netutil import free_port
from router.promotion import machine, outbox
from router.promotion.config import parse_promotion_config
from router.promotion.state import Pin
from router.promotion.store import PromotionStore


async def test_undeliverable_event_stays_visible_and_the_next_deliverer_sends_it(
    redis_url: str,
) -> None:
    port = free_port()  # nothing listens here yet
    cfg = parse_promotion_config({"webhooks": {
        "urls": [f"http://127.0.0.1:{port}/hook"], "max_attempts": 2, "backoff_initial_s": 0.01,
        "timeout_s": 0.5}})  # fmt: skip
    r = aioredis.Redis.from_url(redis_url)
    got: list[bytes] = []
    try:
        assert await outbox.publish_receivers(r, "exp", cfg.webhooks)
        store = PromotionStore(r, "exp")
        pin = Pin("http://127.0.0.1:1", "a")
        await store.update(lambda cur: machine.start(
            experiment="exp", cfg=cfg, champion=pin, challenger=pin, routers=[], policy=None,
            actor="t", now=1000.0))  # fmt: skip
        first = outbox.Deliverer(r, "exp")
        res = await first.deliver_now(10.0)
        assert res is not None and res.failed == 1 and res.delivered == 0
        summary = outbox.summary(await outbox.entries(r, "exp"))
        assert summary["undeliverable"] == 1 and summary["failed"][0]["id"] == "exp:0"
        assert "after 2 attempts" in summary["failed"][0]["error"]
        metrics = await store.metrics()
        assert metrics["webhooks_undeliverable"] == 1 and metrics["webhooks_failed"] == 1

        async def hook(request: web.Request) -> web.Response:
            got.append(await request.read())
            return web.Response(status=204)

        app = web.Application()
        app.router.add_post("/hook", hook)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            # one deliverer at a time: while one holds the lease, another does not send
            holder = outbox.Deliverer(r, "exp")
            assert await holder.lease.try_acquire()
            assert await outbox.Deliverer(r, "exp").deliver_now(5.0) is None
            await holder.lease.release()
            # a new deliverer retries it: `router webhooks --once`, the worker for when no
            # controller runs (it needs no promotion file: the receivers are in Redis)
            code = await asyncio.to_thread(
                cli_main, ["webhooks", "--experiment", "exp", "--redis", redis_url, "--once"]
            )
            assert code == 0
        finally:
            await runner.cleanup()
        assert len(got) == 1 and b'"exp:0"' in got[0]
        assert await outbox.entries(r, "exp") == []
        assert (await store.metrics())["webhooks_undeliverable"] == 0
    finally:
        await r.aclose()


async def test_no_receivers_no_outbox(redis_url: str) -> None:
    r = aioredis.Redis.from_url(redis_url)
    try:
        cfg = parse_promotion_config({})
        assert not await outbox.publish_receivers(r, "exp", cfg.webhooks)
        pin = Pin("http://127.0.0.1:1", "a")
        await PromotionStore(r, "exp").update(lambda cur: machine.start(
            experiment="exp", cfg=cfg, champion=pin, challenger=pin, routers=[], policy=None,
            actor="t", now=1000.0))  # fmt: skip
        assert await outbox.entries(r, "exp") == []
    finally:
        await r.aclose()


