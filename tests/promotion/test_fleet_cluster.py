"""Issue 19: the controller on a real 3-master Redis Cluster, without ``--routers``: it reads the
pins from the fleet's live state, commits each transition with the live state, audit and
outbox in one hash slot, waits for the router's heartbeat, and a CLI rollback ends it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from router.capture.clients import make_client
from router.capture.controlplane import ControlPlane
from router.capture.redisproc import LocalCluster
from router.commands.canary import format_status
from router.promotion import actions
from router.promotion.config import parse_promotion_config
from router.promotion.controller import Controller, ControllerOptions
from tests.helpers import InProcessRouter, config_dict, echo_app, make_config, start_app
from tests.promotion.conftest import promotion_dict


async def test_controller_on_a_three_master_cluster_without_router_list(tmp_path: Path) -> None:
    r1, champ = await start_app(echo_app("champion"))
    r2, chall = await start_app(echo_app("challenger"))
    with LocalCluster(tmp_path / "cluster", masters=3, replicas=0) as cluster:
        url = cluster.url()
        cfg = make_config(config_dict(champ, chall, url, tmp=tmp_path))
        d = promotion_dict(tmp_path)
        d["steps"][0]["min_duration_s"] = 3600.0  # stays in shadow until the rollback
        pcfg = parse_promotion_config(d)
        async with InProcessRouter(cfg, tmp_path / "run", url) as router:
            ctl = Controller(
                ControllerOptions(experiment="t", redis_url=url, cfg=pcfg),
                analyse=lambda *a, **k: {},
            )
            task = asyncio.create_task(ctl.run())
            t0 = time.monotonic()
            while router.app.state.mirror != 1.0 and time.monotonic() - t0 < 10:
                await asyncio.sleep(0.05)
            assert router.app.state.mirror == 1.0, "the shadow step reached the router"
            while ctl.convergence is None and time.monotonic() - t0 < 10:
                await asyncio.sleep(0.05)
            assert ctl.convergence is not None and ctl.convergence["converged"]
            assert ctl.convergence["replicas"] == 1
            res = await actions.rollback(url, "t", pcfg, by="sre", reason="test", now=time.time())
            assert res.state.stage == "rolled_back"
            final = await asyncio.wait_for(task, 15)
            assert final.stage == "rolled_back"
            assert (router.app.state.split, router.app.state.mirror) == (0.0, 0.0)
        client = make_client(url)
        try:
            plane = ControlPlane(client, "t")
            assert plane.keys.live == "{t}:live"  # one hash slot per experiment
            live = await plane.read_live()
            assert live is not None and live["split"] == 0.0 and live["version"] >= 3
        finally:
            await client.aclose()
        verified = await actions.verify(url, "t", None)
        assert verified.problems == [] and verified.records >= 3
        status = await actions.status(url, "t")
        assert status["state"]["stage"] == "rolled_back" and status["lease_holder"] is None
        assert status["convergence"]["converged"] and status["outbox"]["undeliverable"] == 0
        text = format_status(status)
        assert "live state   v" in text and "convergence  v" in text, text
        assert "(shared live state in Redis)" in text
    await r1.cleanup()
    await r2.cleanup()
