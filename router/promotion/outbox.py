"""The durable webhook outbox: every audited transition, whoever commits it, is delivered.

Every commit to the audit chain (the controller, ``router approve``/``reject``/``canary
rollback``/``resume``, a router's admin API) writes one outbox entry per audit record in the
same Lua script as the record itself (:mod:`router.capture.controlplane`), when the experiment
has webhook receivers. The receivers (URLs, secret, timeouts, retry policy) live in the
experiment's shared state (``ControlKeys.webhooks``), written by ``router canary start`` from
its ``--promotion`` file (the secret from the env var ``webhooks.secret_env`` names), so no
other command needs that file to deliver.

One deliverer at a time (a lease on ``outbox:lease``) sends the entries in audit order with the
existing signing, retries and stable delivery id (``<experiment>:<audit seq>``, the
``X-Shadow-Router-Delivery`` header): the running controller; a CLI action when nobody else
holds the lease (bounded wait, the rest stays queued); or ``router webhooks --experiment NAME``
(a worker for when no controller runs). An entry leaves the outbox once every URL took it;
one that exhausted its attempts is marked ``failed`` with the last error, stays visible
(``router canary status``, the ``webhooks_undeliverable`` count) and is tried again by the
next deliverer that starts. Delivery is at least once: receivers deduplicate on the id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import orjson

from router.capture.controlplane import is_cluster_client, parse_doc
from router.capture.keys import ControlKeys
from router.promotion.commit import webhook_event
from router.promotion.config import WebhookConfig
from router.promotion.lease import Lease
from router.promotion.webhooks import WebhookSender

log = logging.getLogger("router.promotion.outbox")


def _keys(client: Any, experiment: str) -> ControlKeys:
    return ControlKeys(experiment, cluster=is_cluster_client(client))


async def publish_receivers(client: Any, experiment: str, cfg: WebhookConfig) -> bool:
    """Store the experiment's webhook receivers (from the controller's promotion file) in the
    shared state; no URLs removes them (no more outbox entries). Returns whether any are set."""
    k = _keys(client, experiment)
    if not cfg.urls:
        await client.delete(k.webhooks)
        return False
    secret = os.environ.get(cfg.secret_env, "")
    if not secret:
        log.warning("webhooks: %s is not set; signing with an empty secret", cfg.secret_env)
    doc = {"urls": list(cfg.urls), "secret": secret, "secret_env": cfg.secret_env,
           "timeout_s": cfg.timeout_s, "max_attempts": cfg.max_attempts,
           "backoff_initial_s": cfg.backoff_initial_s, "backoff_max_s": cfg.backoff_max_s,
           "updated_at": time.time()}  # fmt: skip
    await client.set(k.webhooks, orjson.dumps(doc))
    return True


async def entries(client: Any, experiment: str) -> list[dict[str, Any]]:
    """The outbox, oldest (lowest audit seq) first."""
    raw = await client.hgetall(_keys(client, experiment).outbox)
    out = [d for d in (parse_doc(v) for v in raw.values()) if d is not None]
    return sorted(out, key=lambda e: int(e.get("record", {}).get("seq", 0)))


def summary(items: list[dict[str, Any]]) -> dict[str, Any]:
    """For ``canary status``: counts, and the undeliverable entries with their last error."""
    failed = [e for e in items if e.get("failed")]
    return {"pending": len(items) - len(failed), "undeliverable": len(failed),
            "failed": [{"id": e["id"], "event": e["record"].get("event"),
                        "attempts": e.get("attempts", 0), "error": e.get("last_error")}
                       for e in failed]}  # fmt: skip


@dataclass
class Pass:
    delivered: int = 0
    failed: int = 0
    left: int = 0


class Deliverer:
    """Delivers one experiment's outbox while it holds the outbox lease."""

    def __init__(self, client: Any, experiment: str, *, lease_ttl_s: float = 15.0) -> None:
        self.client = client
        self.experiment = experiment
        self.keys = _keys(client, experiment)
        self.lease = Lease(client, experiment, lease_ttl_s, key=self.keys.outbox_lease)
        self.retry_failed = True  # the first pass of a new deliverer retries failed entries

    async def _count(self, name: str, n: int) -> None:
        if n:
            await self.client.hincrby(self.keys.metrics, name, n)

    async def deliver_pending(self) -> Pass:
        """One pass over the outbox (the caller holds the lease)."""
        result = Pass()
        conf = parse_doc(await self.client.get(self.keys.webhooks))
        items = await entries(self.client, self.experiment)
        if conf is None or not conf.get("urls"):
            result.left = len(items)
            return result
        sender = WebhookSender(
            list(conf["urls"]), str(conf.get("secret", "")),
            timeout_s=float(conf.get("timeout_s", 5.0)),
            max_attempts=int(conf.get("max_attempts", 5)),
            backoff_initial_s=float(conf.get("backoff_initial_s", 0.5)),
            backoff_max_s=float(conf.get("backoff_max_s", 30.0)),
        )  # fmt: skip
        await sender.start()
        try:
            for entry in items:
                if entry.get("failed") and not self.retry_failed:
                    result.left += 1
                    continue
                await self._deliver(sender, entry, result)
        finally:
            await sender.stop(timeout=0.1)
            for name in ("delivered", "retried", "failed"):
                await self._count(f"webhooks_{name}", sender.counts.get(name, 0))
            undeliverable = sum(1 for e in await entries(self.client, self.experiment)
                                if e.get("failed"))  # fmt: skip
            await self.client.hset(self.keys.metrics, "webhooks_undeliverable", undeliverable)
        self.retry_failed = False
        return result

    async def _deliver(self, sender: WebhookSender, entry: dict[str, Any], out: Pass) -> None:
        payload = webhook_event(entry["record"])
        done = set(entry.get("delivered_to") or [])
        errors = []
        for url in sender.urls:
            if url in done:
                continue
            if await sender.deliver(url, payload):
                done.add(url)
                entry["delivered_to"] = sorted(done)
            else:
                errors.append(f"{url}: {sender.last_error.get(url, 'failed')}")
        entry["attempts"] = int(entry.get("attempts", 0)) + 1
        if not errors:
            await self.client.hdel(self.keys.outbox, entry["id"])
            out.delivered += 1
            return
        entry.update(failed=True, last_error="; ".join(errors)[:1000], failed_at=time.time())
        await self.client.hset(self.keys.outbox, entry["id"], orjson.dumps(entry))
        out.failed += 1
        log.error("webhook %s (%s) undeliverable, kept in the outbox: %s", entry["id"],
                  entry["record"].get("event"), entry["last_error"])  # fmt: skip

    async def deliver_now(self, timeout_s: float) -> Pass | None:
        """A CLI action's delivery: one bounded pass when no one else delivers (None: another
        deliverer holds the lease and will send them)."""
        if not await self.lease.try_acquire():
            return None
        try:
            return await asyncio.wait_for(self.deliver_pending(), timeout_s)
        except TimeoutError:
            log.warning(
                "webhooks: still delivering after %.0fs; the rest stays in the outbox for the "
                "next deliverer (router webhooks, or the controller)", timeout_s,
            )  # fmt: skip
            return None
        finally:
            with contextlib.suppress(Exception):
                await self.lease.release()

    async def run(self, stop: asyncio.Event, interval_s: float = 0.5, wait_s: float = 0.0) -> None:
        """Deliver until ``stop`` (the controller's task, ``router webhooks``), holding the lease
        (renewed every pass; lost: wait for it again)."""
        while not stop.is_set():
            if not self.lease.valid:
                if not await self.lease.try_acquire():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), max(interval_s, 1.0))
                    continue
                log.info("%s: delivering the webhook outbox", self.experiment)
            try:
                await self.lease.renew()
                await self.deliver_pending()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s: webhook outbox pass failed", self.experiment)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)
        with contextlib.suppress(Exception):
            await self.lease.release()
