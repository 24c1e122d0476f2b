"""``router demo --llm``: the streaming story with two local text models (no weights).

Starts the embedded Redis (or uses ``REDIS_URL``), two OpenAI-compatible text models
(:mod:`router.demo.llm`: the champion answers concisely, the challenger verbosely and refuses
"forbidden" prompts) that stream tokens as server-sent events, and the router with
``prediction_kind: text`` / ``prediction_format: openai``. Phase 1 mirrors every request (shadow);
phase 2 serves half the users from the challenger (canary) and posts thumbs-up/down ratings as an
application would. It prints time to first token through the router next to the direct call, and
the text divergence, and writes the HTML report.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import redis

from router.capture.redisproc import RedisProcess
from router.config import RouterConfig, parse_config
from router.demo.llm import TextModelServer, TextModelSpec
from router.sidecar.app import PromotionView
from router.sidecar.server import RunningRouter, install_uvloop

TOKEN = "demo-admin-token"
PATH = "/v1/chat/completions"
TOPICS = ("billing", "latency", "caching", "retries", "forbidden topic", "deployment", "quotas")


@dataclass
class LLMDemoOptions:
    requests: int = 300  # per phase
    users: int = 200
    concurrency: int = 16
    seed: int = 7
    data_dir: Path = Path(".router-data/demo-llm")
    report: Path = Path("demo-llm-report.html")
    promotion_view: PromotionView | None = None


def _config(champ: str, chall: str, redis_url: str, data_dir: Path) -> RouterConfig:
    return parse_config(
        {
            "listen": "127.0.0.1:0",
            "champion": {"url": champ, "version": "chat-concise-1", "timeout": 10},
            "challenger": {"url": chall, "version": "chat-verbose-2", "timeout": 10},
            "experiment": {
                "name": "demo-llm",
                "salt": "demo-llm-2026-11",
                "unit": {"header": "X-User-Id"},
                "split": 0.0,
                "mirror": 1.0,
                "prediction_kind": "text",
                "prediction_format": "openai",
                "prediction_path": None,
            },
            "capture": {"redis": redis_url, "data_dir": str(data_dir), "batch_interval_ms": 20},
            "admin": {"token_env": "ROUTER_DEMO_TOKEN"},
            "limits": {"mirror_max_body": 65536},
        },
        "demo --llm",
    )


def _prompt(rng: random.Random) -> str:
    return f"How should I think about {rng.choice(TOPICS)} for service {rng.randrange(40)}?"


async def _stream(
    session: aiohttp.ClientSession, url: str, prompt: str, user: str
) -> tuple[float, str, str]:
    """(seconds to the first event, the variant that answered, the request id)."""
    body = {"model": "any", "stream": True, "messages": [{"role": "user", "content": prompt}]}
    t0 = time.perf_counter()
    first = 0.0
    async with session.post(url + PATH, json=body, headers={"X-User-Id": user}) as r:
        r.raise_for_status()
        async for line in r.content:
            if not first and line.startswith(b"data:"):
                first = time.perf_counter() - t0
        return first, r.headers.get("X-Router-Variant", ""), r.headers.get("X-Request-Id", "")


async def _ttft(url: str, direct: str, rng: random.Random, n: int = 30) -> tuple[float, float]:
    """Median time to first token direct and through the router, interleaved."""
    d, r = [], []
    async with aiohttp.ClientSession() as s:
        for i in range(n):
            prompt = _prompt(rng)
            d.append((await _stream(s, direct, prompt, f"probe-{i}"))[0])
            r.append((await _stream(s, url, prompt, f"probe-{i}"))[0])
    return statistics.median(d) * 1e3, statistics.median(r) * 1e3


async def _traffic(url: str, opts: LLMDemoOptions, rng: random.Random) -> list[tuple[str, str]]:
    prompts = [(_prompt(rng), f"user-{rng.randrange(opts.users)}") for _ in range(opts.requests)]
    out: list[tuple[str, str]] = []
    sem = asyncio.Semaphore(opts.concurrency)
    async with aiohttp.ClientSession() as s:

        async def one(prompt: str, user: str) -> None:
            async with sem:
                _, variant, rid = await _stream(s, url, prompt, user)
                out.append((variant, rid))

        await asyncio.gather(*(one(p, u) for p, u in prompts))
    return out


def _ratings(sent: list[tuple[str, str]], rng: random.Random) -> bytes:
    """Thumbs up (1) / down (0): users like the concise champion a little more."""
    rows = []
    for variant, rid in sent:
        p = 0.62 if variant == "champion" else 0.55
        rows.append(orjson.dumps({"request_id": rid, "metric": "thumbs_up",
                                  "value": float(rng.random() < p)}))  # fmt: skip
    return b"\n".join(rows)


def _report(redis_url: str, since: float, until: float, split: float) -> tuple[Any, Any]:
    from router.analysis import parse_policy
    from router.analysis.report import report_from
    from router.analysis.run import Source, accumulate

    policy = parse_policy({"min_samples": 50, "prediction_kind": "text",
                           "primary_metric": {"name": "thumbs_up", "min_uplift": 0.0},
                           "metrics": {"thumbs_up": {"type": "proportion", "per": "request"}}},
                          "demo --llm policy")  # fmt: skip
    acc = accumulate(Source("demo-llm", redis_url=redis_url, since=since, until=until), policy,
                     kind="text")  # fmt: skip
    return report_from(acc, experiment="demo-llm", split=split), acc


def _print_text(title: str, r: dict[str, Any]) -> None:
    print(f"\n{title}: {r['decision']['action'].upper()}")
    t = r["divergence"].get("text")
    if not t or not t.get("n"):
        print("  no comparable text pairs")
        return
    sim = t["similarity"]
    print(f"  {t['n']} mirrored pairs: exact match {t['exact_match']['rate']:.1%}, similarity "
          f"(ratio) mean {sim['ratio']['mean']:.3f}, token-set {sim['token_set_ratio']['mean']:.3f}"
          f", length ratio x{t['length_ratio']['geometric_mean']:.2f}")  # fmt: skip
    print(f"  refusals added by the challenger: {t['flips']['refusal_added']['n']} "
          f"({t['flips']['refusal_added']['rate']:.1%})")  # fmt: skip
    d = t["ttft_ms"]["paired_diff"]
    if d["n"]:
        print(f"  time to first token (model side): champion "
              f"{t['ttft_ms']['champion']['mean']:.1f} ms, challenger "
              f"{t['ttft_ms']['challenger']['mean']:.1f} ms")  # fmt: skip
    for e in t["examples"][:2]:
        print(f"  most different (ratio {e['ratio']:.2f}):\n    champion:   {e['champion']}\n"
              f"    challenger: {e['challenger']}")  # fmt: skip
    m = r["metrics"].get("thumbs_up")
    if m and m["uplift"]["absolute"] is not None:
        up = m["uplift"]
        print(f"  thumbs up: champion {m['variants']['champion']['mean']:.3f}, challenger "
              f"{m['variants']['challenger']['mean']:.3f} (uplift {up['absolute']:+.3f}, 95% CI "
              f"{up['ci'][0]:+.3f}..{up['ci'][1]:+.3f})")  # fmt: skip


async def run_llm_demo(opts: LLMDemoOptions) -> int:
    redis_proc: RedisProcess | None = None
    redis_url = os.environ.get("REDIS_URL")
    if not redis_url:
        shutil.rmtree(opts.data_dir / "redis", ignore_errors=True)
        redis_proc = RedisProcess(opts.data_dir / "redis", appendonly=True).start()
        redis_url = redis_proc.url
        print(f"embedded redis-server started ({redis_url})")
    try:
        return await _story(opts, redis_url)
    finally:
        if redis_proc is not None:
            redis_proc.stop()


async def _story(opts: LLMDemoOptions, redis_url: str) -> int:
    rng = random.Random(opts.seed)
    client = redis.Redis.from_url(redis_url)
    client.delete("demo-llm:pairs", "demo-llm:outcomes")
    client.close()
    champ = await TextModelServer(TextModelSpec("chat-concise-1", "concise", 0.12, 0.02)).start()
    chall = await TextModelServer(TextModelSpec("chat-verbose-2", "verbose", 0.08, 0.015,
                                                cautious=True)).start()  # fmt: skip
    print(f"champion text model (concise, streams SSE) on {champ.url}")
    print(f"challenger text model (verbose, cautious) on {chall.url}")
    os.environ["ROUTER_DEMO_TOKEN"] = TOKEN
    run_dir = Path(tempfile.mkdtemp(prefix="shadow-router-demo-llm-"))
    router = RunningRouter(_config(champ.url, chall.url, redis_url, opts.data_dir), run_dir,
                           redis_url, promotion_view=opts.promotion_view)  # fmt: skip
    try:
        url = f"http://127.0.0.1:{await router.start()}"
        print(f"router on {url}\n")
        probes = 30 if opts.requests >= 100 else 10
        direct_ms, routed_ms = await _ttft(url, champ.url, rng, probes)
        print(f"time to first token, median of {probes} streamed requests: direct "
              f"{direct_ms:.1f} ms, "
              f"through the router {routed_ms:.1f} ms "
              f"(+{routed_ms - direct_ms:.1f} ms)")  # fmt: skip
        print("\nphase 1 - shadow: the champion streams every answer; the challenger's stream is "
              "consumed off the hot path")  # fmt: skip
        t1 = time.time()
        await _traffic(url, opts, rng)
        await asyncio.sleep(0.5)
        shadow, _ = await asyncio.to_thread(_report, redis_url, t1, time.time(), 0.0)
        _print_text("shadow verdict", shadow)
        print("\nphase 2 - canary: half the users are served by the challenger (still mirrored)")
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as s:
            async with s.post(f"{url}/_router/experiment", json={"split": 0.5}) as r:
                r.raise_for_status()
        await asyncio.sleep(0.3)
        t3 = time.time()
        sent = await _traffic(url, opts, rng)
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as s:
            async with s.post(f"{url}/outcomes", data=_ratings(sent, rng)) as r:
                r.raise_for_status()
        await asyncio.sleep(0.5)
        t4 = time.time()
    finally:
        await router.stop()
        await champ.stop()
        await chall.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
    report, acc = await asyncio.to_thread(_report, redis_url, t3, t4, 0.5)
    _print_text("canary 50% verdict", report)
    from router.analysis.render_html import to_html

    opts.report.write_text(to_html(report, acc), encoding="utf-8")
    print(f"\nHTML report: {opts.report.resolve()}")
    return 0


def main(opts: LLMDemoOptions) -> int:
    install_uvloop()
    return asyncio.run(run_llm_demo(opts))
