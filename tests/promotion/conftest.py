"""Fixtures for end-to-end promotion tests: real model servers, router replicas, traffic."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from router.commands.serve import promotion_view
from router.demo.models import CHALLENGER_WEIGHTS, ModelServer, ModelSpec
from router.promotion.config import PromotionConfig, parse_promotion_config
from tests.helpers import TOKEN, InProcessRouter, config_dict, make_config


def promotion_dict(tmp: Path, **over: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "steps": [
            {"name": "shadow", "split": 0.0, "mirror": 1.0, "min_duration_s": 1.0},
            {"split": 0.5, "min_duration_s": 1.0},
            {"split": 1.0, "mirror": 1.0, "min_duration_s": 1.0},
        ],
        "check_interval_s": 0.2,
        "analysis_interval_s": 0.4,
        "rollback_mirror": 0.0,
        "settle_s": 0.6,
        "guardrails": {"min_requests": 40, "max_error_rate_delta": 0.05},
        "routers": {"token_env": "ROUTER_TEST_TOKEN", "timeout_s": 2.0, "retries": 3},
        "lease": {"ttl_s": 1.5},
        "audit": {"dir": str(tmp / "audit")},
    }
    d.update(over)
    return d


@dataclass
class Fleet:
    """Two router replicas in front of a champion and a challenger model server."""

    routers: list[InProcessRouter]
    champion: ModelServer
    challenger: ModelServer
    redis_url: str
    tmp: Path
    sent: int = 0
    variants: dict[str, int] = field(default_factory=dict)

    @property
    def urls(self) -> list[str]:
        return [r.url for r in self.routers]

    def promotion_file(self, **over: Any) -> tuple[str, PromotionConfig]:
        d = promotion_dict(self.tmp, **over)
        path = self.tmp / "promotion.yaml"
        path.write_text(yaml.safe_dump({"promotion": d}))
        return str(path), parse_promotion_config(d)

    async def router_states(self) -> list[dict[str, Any]]:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as s:
            out = []
            for u in self.urls:
                async with s.get(f"{u}/_router/state") as r:
                    out.append((await r.json())["state"])
            return out


async def _traffic(fleet: Fleet, stop: asyncio.Event, seed: int) -> None:
    rng = random.Random(seed)
    async with aiohttp.ClientSession() as s:
        while not stop.is_set():
            url = rng.choice(fleet.urls)
            uid = f"u{rng.randrange(400)}"
            feats = [rng.gauss(0, 1) for _ in range(4)]
            try:
                async with s.post(
                    f"{url}/predict",
                    json={"user": {"id": uid}, "features": feats},
                    headers={"X-User-Id": uid},
                ) as r:
                    await r.read()
                    v = r.headers.get("X-Router-Variant", "?")
                    fleet.variants[v] = fleet.variants.get(v, 0) + 1
                    fleet.sent += 1
                    rid = r.headers.get("X-Request-Id")
                # outcomes for half the requests; the challenger really converts better (60% vs 30%)
                if rid and rng.random() < 0.5:
                    outcome = {
                        "v": 1,
                        "experiment": "t",
                        "request_id": rid,
                        "metric": "converted",
                        "value": float(rng.random() < (0.6 if v == "challenger" else 0.3)),
                    }
                    async with s.post(
                        f"{url}/outcomes",
                        json=outcome,
                        headers={"Authorization": f"Bearer {TOKEN}"},
                    ) as r:
                        await r.read()
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.003)


@pytest.fixture
def make_fleet(
    redis_url: str, tmp_path: Path
) -> Callable[..., contextlib.AbstractAsyncContextManager[Fleet]]:
    @contextlib.asynccontextmanager
    async def factory(challenger_error_rate: float = 0.0) -> AsyncIterator[Fleet]:
        champ = await ModelServer(ModelSpec("champ-1", seed=1)).start()
        chall = await ModelServer(
            ModelSpec("chall-2", CHALLENGER_WEIGHTS, error_rate=challenger_error_rate, seed=2)
        ).start()
        cfg = make_config(config_dict(champ.url, chall.url, redis_url, tmp=tmp_path))
        routers = [
            InProcessRouter(cfg, tmp_path / f"run{i}", redis_url, promotion_view=promotion_view)
            for i in range(2)
        ]
        async with contextlib.AsyncExitStack() as stack:
            for r in routers:
                await stack.enter_async_context(r)
            fleet = Fleet(routers, champ, chall, redis_url, tmp_path)
            stop = asyncio.Event()
            tasks = [asyncio.create_task(_traffic(fleet, stop, seed)) for seed in range(3)]
            try:
                yield fleet
            finally:
                stop.set()
                await asyncio.gather(*tasks, return_exceptions=True)
        await champ.stop()
        await chall.stop()

    return factory
