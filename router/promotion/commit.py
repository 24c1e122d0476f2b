"""Commit a transition and carry out what it implies. The commit itself sets the fleet's
shared live state to the new target and queues the webhooks of its audit records in the durable
outbox (one script, :meth:`router.promotion.store.PromotionStore.update`); here, routers listed
with ``--routers`` (which do not share the Redis) are reconciled through their admin API and
rollbacks counted. Shared by the controller loop and the CLI actions (rollback, resume,
approve, reject), so a manual action takes effect at once even when no controller is running.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from router.promotion import machine
from router.promotion.routers import Applied, RouterFleet
from router.promotion.state import State, Transition
from router.promotion.store import PromotionStore
from router.promotion.webhooks import event_payload

# (the controller's logger name, as before these functions had a module of their own)
log = logging.getLogger("router.promotion.controller")


async def commit_and_apply(
    store: PromotionStore,
    fn: Callable[[State | None], Transition | None],
    *,
    fleet: RouterFleet | None,
    lease_token: str | None = None,
    note: str = "",
    actor: str = "controller",
) -> tuple[Transition, list[dict[str, Any]], list[Applied]] | None:
    """Commit a transition (live state and outbox included), reconcile listed routers.

    Used by the controller and by the CLI commands (rollback, approve, reject), so a manual
    action takes effect on the routers at once even when no controller is running."""
    done = await store.update(fn, lease_token=lease_token, actor=actor)
    if done is None:
        return None
    t, records = done
    applied: list[Applied] = []
    if fleet is not None and fleet.urls:
        applied = await fleet.reconcile(machine.desired(t.state), note=note or _note(records))
        for a in applied:
            if a.result == "error":
                log.error("router %s not reconciled: %s", a.url, a.error)
    for rec in records:
        if rec["event"] == "rollback":
            await store.count("rollbacks")
    return t, records, applied


def _note(records: list[dict[str, Any]]) -> str:
    return "; ".join(f"promotion {r['event']} (audit seq {r['seq']})" for r in records)[:500]


def webhook_event(rec: dict[str, Any]) -> dict[str, Any]:
    data = dict(rec.get("data") or {})
    data.update(
        stage_from=rec.get("stage_from"),
        stage_to=rec.get("stage_to"),
        step=rec.get("step"),
        split=rec.get("split"),
        versions=rec.get("versions"),
        audit_seq=rec["seq"],
        audit_hash=rec["hash"],
    )
    return event_payload(
        {
            "id": f"{rec['experiment']}:{rec['seq']}",
            "event": rec["event"],
            "experiment": rec["experiment"],
            "ts": rec["ts"],
            "data": data,
        }
    )
