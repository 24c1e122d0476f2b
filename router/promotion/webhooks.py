"""Webhooks: signed JSON events delivered off the controller's path.

Each POST carries::

    Content-Type: application/json
    X-Shadow-Router-Event: <event>              # step_changed, rollback, hold, resumed,
                                                # approval_requested, approved, rejected,
                                                # promoted, live_created, live_changed,
                                                # live_restored (every audited transition)
    X-Shadow-Router-Delivery: <event id>        # stable across retries; deduplicate on it
    X-Shadow-Router-Timestamp: <unix seconds>
    X-Shadow-Router-Signature: sha256=<hex>

The signature is ``HMAC-SHA256(secret, f"{timestamp}.".encode() + raw_body)`` in lowercase hex,
with the secret from the env var named by ``webhooks.secret_env``. To verify, recompute it over the
raw request body and compare in constant time (:func:`verify_signature`), and reject timestamps
older than a few minutes to stop replays. The body has a Slack-compatible ``text`` field, so a
Slack incoming-webhook URL works as a target.

Delivery of the audited transitions goes through the durable outbox in Redis
(:mod:`router.promotion.outbox`), which calls :meth:`WebhookSender.deliver` (signing, retries,
the stable delivery id); an entry stays in the outbox until delivered, so delivery is at least
once (receivers deduplicate on ``X-Shadow-Router-Delivery``). :meth:`WebhookSender.submit` is
the in-memory path: a bounded queue and one background task; a full queue drops the event
(logged and counted), failures (connect errors, timeouts, non-2xx) are retried with
exponential backoff up to ``max_attempts``, then logged and counted as failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson

log = logging.getLogger("router.promotion.webhooks")

SIGNATURE_HEADER = "X-Shadow-Router-Signature"
TIMESTAMP_HEADER = "X-Shadow-Router-Timestamp"
EVENT_HEADER = "X-Shadow-Router-Event"
DELIVERY_HEADER = "X-Shadow-Router-Delivery"


def sign(secret: str, body: bytes, timestamp: int) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_signature(
    secret: str,
    body: bytes,
    timestamp: str | int,
    signature: str,
    *,
    now: float | None = None,
    tolerance_s: float = 300.0,
) -> bool:
    try:
        ts = int(timestamp)
    except (TypeError, ValueError):
        return False
    if abs((time.time() if now is None else now) - ts) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, body, ts), signature)


def backoff_delays(initial: float, maximum: float, attempts: int) -> list[float]:
    """Waits between ``attempts`` tries: initial, 2x, 4x, … capped at ``maximum``."""
    return [min(initial * 2**i, maximum) for i in range(max(attempts - 1, 0))]


def event_payload(event: dict[str, Any]) -> dict[str, Any]:
    """The JSON body for an audit-derived event (see :func:`slack_text`)."""
    return {
        "id": event["id"],
        "event": event["event"],
        "experiment": event["experiment"],
        "ts": event["ts"],
        "text": slack_text(event),
        "data": event.get("data", {}),
    }


def slack_text(event: dict[str, Any]) -> str:
    data = event.get("data", {})
    head = f"[{event['experiment']}] {event['event']}"
    if data.get("stage_from") or data.get("stage_to"):
        head += f": {data.get('stage_from') or '-'} -> {data.get('stage_to') or '-'}"
    if data.get("split") is not None:
        head += f" (split {data['split']:g})"
    reasons = data.get("reasons") or []
    if reasons:
        head += "\n" + "\n".join(f"• {r}" for r in reasons)
    return head


Post = Callable[[str, bytes, dict[str, str], float], Any]


class WebhookSender:
    """Background delivery with a bounded queue; :meth:`submit` never blocks."""

    def __init__(
        self,
        urls: list[str],
        secret: str,
        *,
        queue_size: int = 1000,
        timeout_s: float = 5.0,
        max_attempts: int = 5,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        on_count: Callable[[str, int], None] | None = None,
        on_done: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.urls = list(urls)
        self.secret = secret
        self.queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue(queue_size)
        self.timeout_s = timeout_s
        self.delays = backoff_delays(backoff_initial_s, backoff_max_s, max_attempts)
        self.counts: Counter[str] = Counter()
        self._on_count = on_count
        self._on_done = on_done
        self._remaining: dict[str, int] = {}
        self.callback_tasks: set[asyncio.Future[Any]] = set()  # awaited by stop()
        self._incomplete: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._session: Any = None
        self.last_error: dict[str, str] = {}  # url -> the last failure's short reason

    def _count(self, name: str, n: int = 1) -> None:
        self.counts[name] += n
        if self._on_count is not None:
            try:
                self._on_count(name, n)
            except Exception:  # metrics must never break delivery
                log.exception("webhook counter export failed")

    def submit(self, payload: dict[str, Any]) -> int:
        """Queue ``payload`` for every URL; returns how many deliveries were queued.

        ``on_done(payload)`` is called once every URL got it or finally failed; not when a
        delivery was dropped (so a restarted controller can send it again)."""
        queued = 0
        pid = str(payload.get("id"))
        for url in self.urls:
            try:
                self.queue.put_nowait((url, payload))
                queued += 1
            except asyncio.QueueFull:
                self._incomplete.add(pid)
                self._count("dropped")
                log.error("webhook queue full: dropped %s for %s", payload.get("event"), url)
        if queued:
            self._remaining[pid] = self._remaining.get(pid, 0) + queued
        return queued

    def _finished(self, payload: dict[str, Any]) -> None:
        pid = str(payload.get("id"))
        left = self._remaining.get(pid, 1) - 1
        if left > 0:
            self._remaining[pid] = left
            return
        self._remaining.pop(pid, None)
        if pid in self._incomplete:
            self._incomplete.discard(pid)
        elif self._on_done is not None:
            try:
                self._on_done(payload)
            except Exception:
                log.exception("webhook on_done callback failed")

    async def start(self) -> None:
        import aiohttp

        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        self._task = asyncio.create_task(self._run(), name="webhooks")

    async def drain(self, timeout: float) -> bool:
        """Wait until the queue is empty and in-flight deliveries finished (bounded)."""
        try:
            await asyncio.wait_for(self.queue.join(), timeout)
            return True
        except TimeoutError:
            return False

    async def stop(self, timeout: float = 5.0) -> None:
        await self.drain(timeout)
        if self.callback_tasks:
            await asyncio.wait(list(self.callback_tasks), timeout=timeout)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._session is not None:
            await self._session.close()

    async def _run(self) -> None:
        while True:
            url, payload = await self.queue.get()
            try:
                await self.deliver(url, payload)
            except Exception:
                log.exception("webhook delivery crashed")
            finally:
                self._finished(payload)
                self.queue.task_done()

    async def _post_once(self, url: str, body: bytes, headers: dict[str, str]) -> str | None:
        """None on success, else a short error."""
        try:
            async with self._session.post(url, data=body, headers=headers) as resp:
                await resp.read()
                if 200 <= resp.status < 300:
                    return None
                return f"HTTP {resp.status}"
        except Exception as exc:  # aiohttp errors, timeouts, refused connections
            return f"{type(exc).__name__}: {exc}"

    async def deliver(self, url: str, payload: dict[str, Any]) -> bool:
        body = orjson.dumps(payload)
        for attempt in range(len(self.delays) + 1):
            ts = int(time.time())
            headers = {
                "Content-Type": "application/json",
                EVENT_HEADER: str(payload.get("event", "")),
                DELIVERY_HEADER: str(payload.get("id", "")),
                TIMESTAMP_HEADER: str(ts),
                SIGNATURE_HEADER: sign(self.secret, body, ts),
            }
            err = await self._post_once(url, body, headers)
            if err is None:
                self._count("delivered")
                return True
            if attempt < len(self.delays):
                self._count("retried")
                log.warning(
                    "webhook %s to %s failed (%s); retry %d in %.1fs",
                    payload.get("event"),
                    url,
                    err,
                    attempt + 1,
                    self.delays[attempt],
                )
                await asyncio.sleep(self.delays[attempt])
            else:
                self._count("failed")
                self.last_error[url] = f"{err} (after {attempt + 1} attempts)"
                log.error(
                    "webhook %s to %s failed after %d attempts: %s",
                    payload.get("event"),
                    url,
                    attempt + 1,
                    err,
                )
        return False
