"""End to end: real model servers, two router replicas, Redis capture, the controller (with the
real analyzer and ``e2e_policy.yaml``), the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from router.cli import main as cli_main
from router.promotion import actions
from router.promotion.analyzer import Analyse, analyzer_from_policy
from router.promotion.controller import Controller, ControllerOptions
from router.promotion.lease import LeaseHeld
from router.promotion.store import PromotionStore
from router.promotion.webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify_signature
from tests.helpers import ROOT, TOKEN, start_app, wait_for

from .conftest import Fleet

ANSWERS = {
    "model_card_reviewed": True,
    "disaggregated_results_checked": True,
    "known_limitations_acknowledged": True,
    "on_call_in_place": True,
    "on_call_contact": "@ml-oncall",
}


E2E_POLICY = str(Path(__file__).with_name("e2e_policy.yaml"))


def analyser() -> Analyse:
    return analyzer_from_policy(E2E_POLICY)


async def cli(*args: str) -> tuple[int, str]:
    def call() -> tuple[int, str]:
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            code = cli_main(list(args))
        return code, buf.getvalue()

    return await asyncio.to_thread(call)


def controller(fleet: Fleet, cfg: Any, wait: float = 0.0, new_run: bool = False) -> Controller:
    opts = ControllerOptions(
        experiment="t",
        redis_url=fleet.redis_url,
        cfg=cfg,
        routers=fleet.urls,
        lease_wait_s=wait,
        new_run=new_run,
    )
    return Controller(opts, analyse=analyser())


async def stage_of(redis_url: str) -> tuple[str, int] | None:
    try:
        st = (await actions.status(redis_url, "t"))["state"]
    except actions.NoExperiment:
        return None
    return st["stage"], st["step"]


async def audit(redis_url: str, tmp: Path) -> list[dict[str, Any]]:
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(redis_url)
    try:
        # (the promotion's own records: the routers' live-state records are interleaved)
        recs = await PromotionStore(r, "t").records()
        return [x for x in recs if x and not str(x["event"]).startswith("live_")]
    finally:
        await r.aclose()


class Receiver:
    """A real webhook endpoint that fails its first ``fail`` requests."""

    def __init__(self, fail: int = 0) -> None:
        self.fail = fail
        self.attempts = 0
        self.events: list[tuple[dict[str, str], bytes]] = []

    async def __aenter__(self) -> str:
        async def hook(request: web.Request) -> web.Response:
            self.attempts += 1
            body = await request.read()
            if self.attempts <= self.fail:
                return web.Response(status=500)
            self.events.append((dict(request.headers), body))
            return web.Response(status=200)

        app = web.Application()
        app.router.add_post("/hook", hook)
        self.runner, url = await start_app(app)
        return f"{url}/hook"

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()

    def verified(self, secret: str) -> list[dict[str, Any]]:
        out = []
        for headers, body in self.events:
            assert verify_signature(
                secret, body, headers[TIMESTAMP_HEADER], headers[SIGNATURE_HEADER]
            )
            out.append(orjson.loads(body))
        return out


async def test_good_challenger_ramps_waits_for_approval_then_promotes(
    make_fleet: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROUTER_WEBHOOK_SECRET", "whsec")
    receiver = Receiver()
    async with make_fleet() as fleet, receiver as hook_url:
        pfile, cfg = fleet.promotion_file(webhooks={"urls": [hook_url], "backoff_initial_s": 0.05})
        ctl = controller(fleet, cfg)
        task = asyncio.create_task(ctl.run())
        assert await wait_for(
            lambda: _is(fleet.redis_url, ("awaiting_approval", 2)), timeout=30, step=0.1
        ), await stage_of(fleet.redis_url)
        assert not task.done()
        states = await fleet.router_states()
        assert [(s["split"], s["mirror"]) for s in states] == [(1.0, 1.0)] * 2
        code, out = await cli("canary", "status", "--experiment", "t", "--redis", fleet.redis_url)
        assert code == 0 and "awaiting_approval" in out and "0/1 approvals" in out

        bad = fleet.tmp / "bad.yaml"
        bad.write_text(json.dumps(dict(ANSWERS, on_call_in_place=False)))
        code, _ = await cli(
            "approve",
            "--experiment",
            "t",
            "--reviewer",
            "ana",
            "--answers",
            str(bad),
            "--redis",
            fleet.redis_url,
            "--promotion",
            pfile,
        )
        assert code == 2
        answers = fleet.tmp / "answers.json"
        answers.write_text(json.dumps(ANSWERS))
        code, out = await cli(
            "approve",
            "--experiment",
            "t",
            "--reviewer",
            "ana",
            "--answers",
            str(answers),
            "--redis",
            fleet.redis_url,
            "--promotion",
            pfile,
        )
        assert code == 0, out
        assert "possible rubber stamp" in out and "stage promoted" in out
        final = await asyncio.wait_for(task, 10)
        assert final.stage == "promoted"

        states = await fleet.router_states()
        for s in states:
            assert s["champion"] == {"url": fleet.challenger.url, "version": "chall-2"}
            assert s["challenger"] == {"url": fleet.champion.url, "version": "champ-1"}
            assert (s["split"], s["mirror"]) == (0.0, 0.0)
        st = (await actions.status(fleet.redis_url, "t"))["state"]
        assert st["rollback_target"] == {"url": fleet.champion.url, "version": "champ-1"}
        # the same view through every router's admin API
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as sess:
            async with sess.get(f"{fleet.urls[0]}/_router/promotion?experiment=t") as r:
                assert r.status == 200
                view = await r.json()
            async with sess.get(f"{fleet.urls[0]}/_router/promotion?experiment=nope") as r:
                assert r.status == 404
        assert view["state"]["stage"] == "promoted"
        assert view["state"]["history"], "stage history is visible"

        recs = await audit(fleet.redis_url, fleet.tmp)
        events = [r["event"] for r in recs]
        assert events == ["step_changed"] * 3 + ["approval_requested", "approved", "promoted"]
        approved = recs[4]
        assert approved["data"]["possible_rubber_stamp"] is True
        assert approved["data"]["answers"]["on_call_contact"] == "@ml-oncall"
        assert recs[5]["rollback_target"]["version"] == "champ-1"
        assert recs[3]["data"]["gates"], "approval request must show the gate summary"
        code, out = await cli(
            "audit", "verify", "--experiment", "t", "--redis", fleet.redis_url, "--promotion", pfile
        )
        assert code == 0 and "audit intact" in out and "mirror" in out, out

    # controller (ramp, approval request) and the approve command (approved, promoted) both
    # delivered signed webhooks with a Slack-compatible text
    got = receiver.verified("whsec")
    assert sorted(e["event"] for e in got) == sorted(events)
    promoted = next(e for e in got if e["event"] == "promoted")
    assert "chall-2 promoted" in promoted["text"]


async def _is(redis_url: str, want: tuple[str, int]) -> bool:
    return await stage_of(redis_url) == want


async def test_bad_challenger_rolled_back_within_one_step_with_webhook_retry(
    make_fleet: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROUTER_WEBHOOK_SECRET", "whsec")
    receiver = Receiver(fail=2)
    async with make_fleet(challenger_error_rate=0.3) as fleet, receiver as hook_url:
        pfile, cfg = fleet.promotion_file(
            webhooks={"urls": [hook_url], "backoff_initial_s": 0.05, "max_attempts": 4}
        )
        ctl = controller(fleet, cfg)
        t0 = time.monotonic()
        final = await asyncio.wait_for(ctl.run(), 20)
        assert final.stage == "rolled_back"
        assert final.step == 0, "caught in the shadow step, before any user saw the challenger"
        assert time.monotonic() - t0 < 8
        states = await fleet.router_states()
        assert [(s["split"], s["mirror"]) for s in states] == [(0.0, 0.0)] * 2
        assert all(s["champion"]["version"] == "champ-1" for s in states)
        recs = await audit(fleet.redis_url, fleet.tmp)
        assert [r["event"] for r in recs] == ["step_changed", "rollback"]
        rb = recs[1]["data"]
        assert rb["reasons"] and all(r.strip() for r in rb["reasons"])
        gate = next(g for g in rb["gates"] if g["name"] in ("error_rate_delta", "error_rate"))
        assert gate["passed"] is False and gate["value"] > gate["threshold"]
        metrics = (await actions.status(fleet.redis_url, "t"))["metrics"]
        assert metrics["rollbacks"] == 1

        # restarting an ended ramp is a no-op unless a new run is asked for
        assert (await asyncio.wait_for(controller(fleet, cfg).run(), 5)).stage == "rolled_back"
        assert len(await audit(fleet.redis_url, fleet.tmp)) == 2
        fleet.challenger.spec.error_rate = 0.0  # the fixed model, same version label here
        again = controller(fleet, cfg, new_run=True)
        task = asyncio.create_task(again.run())
        assert await wait_for(lambda: _is(fleet.redis_url, ("canary", 1)), timeout=15, step=0.05)
        again.stop()
        await asyncio.wait_for(task, 5)
        recs = await audit(fleet.redis_url, fleet.tmp)
        assert [r["event"] for r in recs] == ["step_changed", "rollback"] + ["step_changed"] * 2
        assert recs[2]["step"] == 0 and recs[2]["data"]["previous_run"]["result"] == "rolled_back"
        code, out = await cli(
            "audit", "verify", "--experiment", "t", "--redis", fleet.redis_url, "--promotion", pfile
        )
        assert code == 0 and "audit intact" in out and "(redis + mirror" in out, out
    assert receiver.attempts >= 4  # two failures, then step_changed and rollback delivered
    got = receiver.verified("whsec")
    assert [e["event"] for e in got][:2] == ["step_changed", "rollback"]
    assert got[1]["text"].startswith("[t] rollback") and got[1]["data"]["reasons"]


async def test_killed_controller_resumes_same_step_without_repeating_side_effects(
    make_fleet: Callable[..., Any],
) -> None:
    async with make_fleet() as fleet:
        steps = [
            {"name": "shadow", "split": 0.0, "mirror": 1.0, "min_duration_s": 0.5},
            {"split": 0.5, "min_duration_s": 3.0},
            {"split": 1.0, "mirror": 1.0, "min_duration_s": 0.5},
        ]
        pfile, cfg = fleet.promotion_file(steps=steps)
        first = controller(fleet, cfg)
        task = asyncio.create_task(first.run())
        assert await wait_for(lambda: _is(fleet.redis_url, ("canary", 1)), timeout=20, step=0.05)
        # a second controller cannot act while the first holds the lease
        with pytest.raises(LeaseHeld):
            await controller(fleet, cfg).run()
        task.cancel()  # killed mid-step: no clean shutdown, the lease is not released
        with contextlib.suppress(asyncio.CancelledError):
            await task
        before = (await actions.status(fleet.redis_url, "t"))["state"]
        versions = [s["version"] for s in await fleet.router_states()]
        n_audit = len(await audit(fleet.redis_url, fleet.tmp))

        second = controller(fleet, cfg, wait=5.0)
        task2 = asyncio.create_task(second.run())
        assert await wait_for(lambda: second.ticks >= 2, timeout=10, step=0.02)
        now = (await actions.status(fleet.redis_url, "t"))["state"]
        assert (now["stage"], now["step"]) == ("canary", 1)
        assert now["step_started_at"] == before["step_started_at"]  # same step, same clock
        assert [s["version"] for s in await fleet.router_states()] == versions  # no re-POST
        assert len(await audit(fleet.redis_url, fleet.tmp)) == n_audit

        assert await wait_for(
            lambda: _is(fleet.redis_url, ("awaiting_approval", 2)), timeout=20, step=0.1
        )
        code, out = await cli(
            "canary",
            "rollback",
            "--experiment",
            "t",
            "--redis",
            fleet.redis_url,
            "--reason",
            "drill",
            "--by",
            "sre",
            "--promotion",
            pfile,
        )
        assert code == 0, out
        final = await asyncio.wait_for(task2, 5)
        assert final.stage == "rolled_back"
        recs = await audit(fleet.redis_url, fleet.tmp)
        changed = [r["step"] for r in recs if r["event"] == "step_changed"]
        assert changed == [0, 1, 2], "each step entered exactly once across the restart"
        assert recs[-1]["event"] == "rollback" and recs[-1]["actor"] == "operator:sre"
        assert [(s["split"], s["mirror"]) for s in await fleet.router_states()] == [(0.0, 0.0)] * 2
        code, out = await cli(
            "audit",
            "verify",
            "--experiment",
            "t",
            "--redis",
            fleet.redis_url,
            "--file",
            os.path.join(cfg.audit.dir, "t.audit.jsonl"),
        )
        assert code == 0, out


async def test_cli_controller_sigkilled_resumes_and_reject_ends_it(
    make_fleet: Callable[..., Any],
) -> None:
    """``router canary start`` as a real process: SIGKILL mid-step, restart, reject."""
    async with make_fleet() as fleet:
        steps = [
            {"name": "shadow", "split": 0.0, "mirror": 1.0, "min_duration_s": 0.5},
            {"split": 0.5, "min_duration_s": 4.0},
            {"split": 1.0, "mirror": 1.0, "min_duration_s": 0.5},
        ]
        pfile, _ = fleet.promotion_file(steps=steps)
        argv = [
            sys.executable,
            "-m",
            "router",
            "canary",
            "start",
            "--experiment",
            "t",
            "--redis",
            fleet.redis_url,
            "--routers",
            ",".join(fleet.urls),
            "--promotion",
            pfile,
            "--wait-lease",
            "5",
            "--log-level",
            "WARNING",
        ]
        argv += ["--policy", E2E_POLICY]
        log = (fleet.tmp / "ctl.log").open("wb")
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        p1 = await asyncio.create_subprocess_exec(*argv, cwd=ROOT, stdout=log, stderr=log, env=env)
        try:
            ok = await wait_for(lambda: _is(fleet.redis_url, ("canary", 1)), timeout=20, step=0.05)
            assert ok, (fleet.tmp / "ctl.log").read_text()
            before = (await actions.status(fleet.redis_url, "t"))["state"]
        finally:
            p1.kill()
            await p1.wait()
        p2 = await asyncio.create_subprocess_exec(*argv, cwd=ROOT, stdout=log, stderr=log, env=env)
        try:
            ok = await wait_for(
                lambda: _is(fleet.redis_url, ("awaiting_approval", 2)), timeout=25, step=0.1
            )
            assert ok, (fleet.tmp / "ctl.log").read_text()
            code, out = await cli(
                "reject",
                "--experiment",
                "t",
                "--reviewer",
                "bo",
                "--reason",
                "fairness gap in segment",
                "--redis",
                fleet.redis_url,
                "--promotion",
                pfile,
            )
            assert code == 0, out
            assert await asyncio.wait_for(p2.wait(), 10) == 3  # exit status 3: rolled back
        finally:
            if p2.returncode is None:
                p2.kill()
                await p2.wait()
            log.close()
        recs = await audit(fleet.redis_url, fleet.tmp)
        assert [r["event"] for r in recs] == [
            "step_changed",
            "step_changed",
            "step_changed",
            "approval_requested",
            "rejected",
            "rollback",
        ]
        assert recs[2]["ts"] > before["step_started_at"] + 4.0  # step 1 kept its original clock
        assert recs[4]["data"]["reason"] == "fairness gap in segment"
        assert [(s["split"], s["mirror"]) for s in await fleet.router_states()] == [(0.0, 0.0)] * 2


async def test_analyzer_crash_does_not_end_the_ramp(make_fleet: Callable[..., Any]) -> None:
    async with make_fleet() as fleet:
        _, cfg = fleet.promotion_file()
        calls = 0
        inner = analyser()

        def flaky(pairs: list[dict[str, Any]], outcomes: list[dict[str, Any]], **kw: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("analyzer blew up")
            return inner(pairs, outcomes, **kw)

        ctl = Controller(
            ControllerOptions(
                experiment="t", redis_url=fleet.redis_url, cfg=cfg, routers=fleet.urls
            ),
            analyse=flaky,
        )
        task = asyncio.create_task(ctl.run())
        try:
            assert await wait_for(
                lambda: _is(fleet.redis_url, ("awaiting_approval", 2)), timeout=30, step=0.1
            )
        finally:
            ctl.stop()
            await asyncio.wait_for(task, 5)
        assert ctl.tick_errors == 1
        assert (await actions.status(fleet.redis_url, "t"))["metrics"]["tick_errors"] == 1
        assert (await actions.status(fleet.redis_url, "t"))["lease_holder"] is None  # released


async def test_cli_rejects_invalid_promotion_config(tmp_path: Path, redis_url: str) -> None:
    bad = tmp_path / "p.yaml"
    bad.write_text("promotion:\n  steps:\n    - {split: 0.1, min_duraton_s: 5}\n")
    err = io.StringIO()

    def call() -> int:
        with contextlib.redirect_stderr(err):
            return cli_main(
                [
                    "canary",
                    "start",
                    "--experiment",
                    "t",
                    "--redis",
                    redis_url,
                    "--routers",
                    "http://127.0.0.1:1",
                    "--promotion",
                    str(bad),
                ]
            )

    assert await asyncio.to_thread(call) == 2
    assert "promotion.steps.0.min_duraton_s: unknown key" in err.getvalue()
