"""The fleet as the controller sees it: the replicas' heartbeats (written by every router worker
following the shared live state, :mod:`router.sidecar.fleet`) and the wait for convergence.

:func:`converge` polls ``<exp>:replicas`` until every replica with a fresh heartbeat (within
``fleet.stale_after_s``) reports the version, bounded by ``fleet.converge_timeout_s``; it
reports lagging and stale replicas (log, counters ``fleet_not_converged`` and
``fleet_stale_reports``, and ``<exp>:promotion:fleet`` for ``router canary status``) and
forgets heartbeats older than ``fleet.forget_after_s`` (pods that are gone).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson

from router.promotion.config import FleetConfig
from router.promotion.store import PromotionStore

log = logging.getLogger("router.promotion.controller")


async def converge(store: PromotionStore, f: FleetConfig, version: int) -> dict[str, Any]:
    """Wait (bounded) until every replica with a fresh heartbeat applied ``version``;
    report stale (no recent heartbeat) and lagging replicas; forget long-gone ones."""
    assert store.plane is not None
    exp = store.experiment
    started = time.monotonic()
    while True:
        reps = await store.plane.replicas()
        now = time.time()
        fresh = {r: d for r, d in reps.items() if now - float(d.get("ts", 0)) <= f.stale_after_s}
        behind = sorted(r for r, d in fresh.items() if int(d.get("version", 0)) < version)
        if not behind or time.monotonic() - started >= f.converge_timeout_s:
            break
        await asyncio.sleep(0.05)
    stale = sorted(set(reps) - set(fresh))
    gone = [r for r, d in reps.items() if now - float(d.get("ts", 0)) > f.forget_after_s]
    if gone:
        await store.redis.hdel(store.keys.replicas, *gone)
    result = {
        "version": version,
        "converged": not behind,
        "at": now,
        "waited_s": round(time.monotonic() - started, 3),
        "replicas": len(fresh),
        "behind": {r: fresh[r].get("version") for r in behind},
        "stale": {r: round(now - float(reps[r].get("ts", 0)), 1) for r in stale},
    }
    await store.redis.set(store.keys.key("promotion:fleet"), orjson.dumps(result))
    if behind:
        await store.count("fleet_not_converged")
        log.error("%s: %d replica(s) had not applied v%d after %.1fs: %s", exp, len(behind),
                  version, f.converge_timeout_s, result["behind"])  # fmt: skip
    if stale:
        await store.count("fleet_stale_reports")
        log.warning("%s: stale replicas (no heartbeat for > %gs): %s", exp, f.stale_after_s,
                    result["stale"])  # fmt: skip
    if not fresh:
        log.warning("%s: no router heartbeats: nothing to wait for", exp)
    return result
