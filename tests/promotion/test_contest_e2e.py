"""End to end, several challengers: real model servers (a good and a failing challenger), two
router replicas, Redis capture, the controller with the real analyzer. The failing challenger is
dropped early, the good one alone goes to approval and is promoted."""

from __future__ import annotations

import asyncio
import contextlib
import random
from pathlib import Path

import aiohttp

from router.commands.serve import promotion_view
from router.demo.models import CHALLENGER_WEIGHTS, ModelServer, ModelSpec
from router.promotion import actions, machine
from router.promotion.analyzer import analyzer_from_policy
from router.promotion.approval import validate_answers
from router.promotion.config import parse_promotion_config
from router.promotion.controller import Controller, ControllerOptions
from tests.helpers import TOKEN, InProcessRouter, config_dict, make_config, wait_for
from tests.promotion.conftest import promotion_dict
from tests.promotion.test_e2e import ANSWERS, E2E_POLICY, audit, stage_of

RATES = {"champion": 0.3, "good": 0.6, "bad": 0.3}


async def _traffic(urls: list[str], stop: asyncio.Event, seed: int, seen: dict[str, int]) -> None:
    rng = random.Random(seed)
    async with aiohttp.ClientSession() as s:
        while not stop.is_set():
            url = rng.choice(urls)
            uid = f"u{rng.randrange(400)}"
            feats = [rng.gauss(0, 1) for _ in range(4)]
            try:
                async with s.post(f"{url}/predict", headers={"X-User-Id": uid},
                                  json={"user": {"id": uid}, "features": feats}) as r:  # fmt: skip
                    await r.read()
                    v = r.headers.get("X-Router-Variant", "?")
                    rid = r.headers.get("X-Request-Id")
                seen[v] = seen.get(v, 0) + 1
                if rid and rng.random() < 0.5:
                    value = float(rng.random() < RATES.get(v, 0.3))
                    outcome = {"v": 1, "experiment": "t", "request_id": rid,
                               "metric": "converted", "value": value}  # fmt: skip
                    auth = {"Authorization": f"Bearer {TOKEN}"}
                    async with s.post(f"{url}/outcomes", json=outcome, headers=auth) as r:
                        await r.read()
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.003)


async def test_a_failing_challenger_is_dropped_and_the_good_one_promoted(
    redis_url: str, tmp_path: Path
) -> None:
    champ = await ModelServer(ModelSpec("champ-1", seed=1)).start()
    good = await ModelServer(ModelSpec("good-2", CHALLENGER_WEIGHTS, seed=2)).start()
    bad = await ModelServer(ModelSpec("bad-3", CHALLENGER_WEIGHTS, error_rate=0.3, seed=3)).start()
    d = config_dict(champ.url, good.url, redis_url, tmp=tmp_path)
    del d["challenger"]
    d["experiment"].pop("split")
    d["experiment"].pop("mirror")
    d["challengers"] = [
        {"name": "good", "url": good.url, "version": "good-2", "timeout": 2.0},
        {"name": "bad", "url": bad.url, "version": "bad-3", "timeout": 2.0},
    ]
    cfg = make_config(d)
    routers = [
        InProcessRouter(cfg, tmp_path / f"run{i}", redis_url, promotion_view=promotion_view)
        for i in range(2)
    ]
    pcfg = parse_promotion_config(promotion_dict(tmp_path))
    seen: dict[str, int] = {}
    try:
        async with contextlib.AsyncExitStack() as stack:
            for r in routers:
                await stack.enter_async_context(r)
            urls = [r.url for r in routers]
            stop = asyncio.Event()
            tasks = [asyncio.create_task(_traffic(urls, stop, i, seen)) for i in range(3)]
            opts = ControllerOptions(experiment="t", redis_url=redis_url, cfg=pcfg, routers=urls)
            ctl = Controller(opts, analyse=analyzer_from_policy(E2E_POLICY))
            run = asyncio.create_task(ctl.run())
            try:
                assert await wait_for(
                    lambda: _at(redis_url, ("awaiting_approval", 2)), timeout=45, step=0.1
                ), await stage_of(redis_url)
                st = (await actions.status(redis_url, "t"))["state"]
                assert st["challenger"] == {"url": good.url, "version": "good-2"}
                dropped = {c["name"]: c["dropped"] for c in st["contenders"] if c["dropped"]}
                assert set(dropped) == {"bad"}
                assert any("bad" in r for r in dropped["bad"]["reasons"])
                for r in routers:  # the winner alone takes the last step's share
                    live = {c.name: (c.split, c.mirror) for c in r.app.state.challengers}
                    assert live == {"good": (1.0, 1.0), "bad": (0.0, 0.0)}
                events = [x["event"] for x in await audit(redis_url, tmp_path)]
                assert events.count("challenger_dropped") == 1
                assert events[-1] == "approval_requested"
                state = await ctl.store.load()  # type: ignore[union-attr]
                assert state is not None
                promoted = machine.approve(state, reviewer="ana",
                                           answers=validate_answers(ANSWERS), now=state.updated_at
                                           + 120)  # fmt: skip
                assert promoted.state.champion.version == "good-2"
            finally:
                ctl.stop()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(run, 10)
                stop.set()
                await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        for m in (champ, good, bad):
            await m.stop()
    assert seen.get("good", 0) > 0 and seen.get("champion", 0) > 0


async def _at(redis_url: str, want: tuple[str, int]) -> bool:
    return await stage_of(redis_url) == want
