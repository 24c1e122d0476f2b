"""Commit a transition and carry out what it implies: reconcile every router to the new target,
count rollbacks, queue the webhooks of its audit records. Shared by the controller loop and the
CLI actions (rollback, resume, approve, reject), so a manual action takes effect on the routers
at once even when no controller is running.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

from router.promotion import machine
from router.promotion.config import PromotionConfig
from router.promotion.routers import Applied, RouterFleet
from router.promotion.state import State, Transition
from router.promotion.store import PromotionStore
from router.promotion.webhooks import WebhookSender, event_payload

# (the controller's logger name, as before these functions had a module of their own)
log = logging.getLogger("router.promotion.controller")

WEBHOOK_EVENTS = frozenset(
    {
        "step_changed",
        "rollback",
        "hold",
        "resumed",
        "approval_requested",
        "approved",
        "rejected",
        "promoted",
        "challenger_dropped",
    }
)


async def commit_and_apply(
    store: PromotionStore,
    fn: Callable[[State | None], Transition | None],
    *,
    fleet: RouterFleet | None,
    sender: WebhookSender | None,
    lease_token: str | None = None,
    note: str = "",
) -> tuple[Transition, list[dict[str, Any]], list[Applied]] | None:
    """Commit a transition, reconcile the routers to the new target, queue webhooks.

    Used by the controller and by the CLI commands (rollback, approve, reject), so a manual
    action takes effect on the routers at once even when no controller is running."""
    done = await store.update(fn, lease_token=lease_token)
    if done is None:
        return None
    t, records = done
    applied: list[Applied] = []
    if fleet is not None:
        applied = await fleet.reconcile(machine.desired(t.state), note=note or _note(records))
        for a in applied:
            if a.result == "error":
                log.error("router %s not reconciled: %s", a.url, a.error)
    for rec in records:
        if rec["event"] == "rollback":
            await store.count("rollbacks")
        if sender is not None and rec["event"] in WEBHOOK_EVENTS:
            sender.submit(webhook_event(rec))
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


def make_sender(cfg: PromotionConfig, store: PromotionStore) -> WebhookSender | None:
    if not cfg.webhooks.urls:
        return None
    secret = os.environ.get(cfg.webhooks.secret_env, "")
    if not secret:
        log.warning(
            "webhooks: %s is not set; signing with an empty secret", cfg.webhooks.secret_env
        )

    def spawn(coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        sender.callback_tasks.add(task)
        task.add_done_callback(sender.callback_tasks.discard)

    def on_count(name: str, n: int) -> None:
        spawn(store.count(f"webhooks_{name}", n))

    def on_done(payload: dict[str, Any]) -> None:
        seq = payload.get("data", {}).get("audit_seq")
        if isinstance(seq, int):
            spawn(store.mark_webhook_done(seq))

    w = cfg.webhooks
    sender = WebhookSender(
        w.urls,
        secret,
        queue_size=w.queue_size,
        timeout_s=w.timeout_s,
        max_attempts=w.max_attempts,
        backoff_initial_s=w.backoff_initial_s,
        backoff_max_s=w.backoff_max_s,
        on_count=on_count,
        on_done=on_done,
    )
    return sender
