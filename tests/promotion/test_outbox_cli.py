"""Issue 19 item 5, as an operator would follow the README: ``router approve``, ``router reject``
and ``router canary rollback`` written without ``--promotion`` deliver ``approved``,
``promoted``, ``rejected`` and ``rollback`` to the receivers the controller was started with,
through the durable outbox, to a real receiver that fails its first deliveries.

The controller is ``router canary start`` as a real process without ``--routers`` (the two
routers share the Redis); the CLI commands are real processes too, run in a scratch directory
with ``REDIS_URL`` set, exactly as the README writes them."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from router.promotion import actions
from tests.helpers import ROOT, wait_for

from .test_e2e import Receiver, stage_of


def always_promote(pairs: Any, outcomes: Any, **kw: Any) -> dict[str, Any]:
    """An analyzer stand-in (``--analyzer``): every step's verdict is promote."""
    return {"decision": {"action": "promote", "reasons": ["test analyzer: promote"]}, "gates": []}


async def run(cwd: Path, env: dict[str, str], *args: str) -> tuple[int, str]:
    p = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "router", *args, cwd=cwd, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(p.communicate(), 60)
    return int(p.returncode or 0), out.decode()


async def test_cli_actions_without_promotion_file_deliver_their_webhooks(
    make_fleet: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROUTER_WEBHOOK_SECRET", "whsec")
    receiver = Receiver(fail=3)
    async with make_fleet() as fleet, receiver as hook_url:
        steps = [
            {"name": "shadow", "split": 0.0, "mirror": 1.0, "min_duration_s": 0.2},
            {"split": 1.0, "mirror": 1.0, "min_duration_s": 0.2},
        ]
        pfile, _ = fleet.promotion_file(
            steps=steps,
            webhooks={"urls": [hook_url], "backoff_initial_s": 0.05, "max_attempts": 5},
            lease={"ttl_s": 10.0},  # (a loaded machine must not cost the controller its lease)
        )
        env = dict(os.environ, REDIS_URL=fleet.redis_url, PYTHONPATH=str(ROOT))
        scratch = tmp_path / "operator"  # where the operator runs the CLI
        scratch.mkdir()
        answers = scratch / "answers.yaml"
        answers.write_text(yaml.safe_dump({
            "model_card_reviewed": True, "disaggregated_results_checked": True,
            "known_limitations_acknowledged": True, "on_call_in_place": True,
            "on_call_contact": "@ml-oncall",
        }))  # fmt: skip
        start = ["canary", "start", "--experiment", "t", "--promotion", pfile,
                 "--analyzer", "tests.promotion.test_outbox_cli:always_promote",
                 "--log-level", "WARNING"]  # fmt: skip
        log = (tmp_path / "ctl.log").open("wb")

        async def controller(*extra: str) -> asyncio.subprocess.Process:
            return await asyncio.create_subprocess_exec(
                sys.executable, "-m", "router", *start, *extra, cwd=ROOT, env=env,
                stdout=log, stderr=log,
            )  # fmt: skip

        async def at(stage: str) -> bool:
            return await wait_for(
                lambda: _stage_is(fleet.redis_url, stage), timeout=30, step=0.05
            )

        try:
            # 1. approve while the controller runs: it delivers approved and promoted
            ctl = await controller()
            assert await at("awaiting_approval"), (tmp_path / "ctl.log").read_text()
            code, out = await run(scratch, env, "approve", "--experiment", "t",
                                  "--reviewer", "alice", "--answers", str(answers))  # fmt: skip
            assert code == 0, out
            assert await asyncio.wait_for(ctl.wait(), 30) == 0
            # 2. reject a new run: rejected and rollback
            ctl = await controller("--new-run")
            assert await at("awaiting_approval"), (tmp_path / "ctl.log").read_text()
            code, out = await run(scratch, env, "reject", "--experiment", "t",
                                  "--reviewer", "bob", "--reason", "fairness gap")  # fmt: skip
            assert code == 0, out
            assert await asyncio.wait_for(ctl.wait(), 30) == 3
            # 3. roll back by hand with no controller running: the CLI delivers itself
            ctl = await controller("--new-run")
            assert await at("shadow") or await at("canary")
            ctl.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(ctl.wait(), 30) == 0
            code, out = await run(scratch, env, "canary", "rollback", "--experiment", "t",
                                  "--reason", "manual test")  # fmt: skip
            assert code == 0, out
            assert "webhooks: 1 delivered" in out, out
        finally:
            if ctl.returncode is None:
                ctl.kill()
                await ctl.wait()
            log.close()
    got = receiver.verified("whsec")
    events = [e["event"] for e in got]
    for wanted in ("approved", "promoted", "rejected", "rollback"):
        assert wanted in events, events
    assert events.count("rollback") == 2  # the rejection's and the manual one
    assert receiver.attempts >= len(got) + 3  # the first three attempts failed, then retried
    ids = [e["id"] for e in got]
    assert len(ids) == len(set(ids))  # each delivery id once (receivers deduplicate on it)
    status = await actions.status(fleet.redis_url, "t")
    assert status["outbox"] == {"pending": 0, "undeliverable": 0, "failed": []}


async def _stage_is(redis_url: str, stage: str) -> bool:
    got = await stage_of(redis_url)
    return got is not None and got[0] == stage
