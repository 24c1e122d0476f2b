"""One-shot actions for the CLI (status, rollback, resume, approve, reject, audit), as async
functions over a Redis URL, so the commands stay thin and the tests can call them directly.

Manual actions commit their transition (atomically with the audit, the fleet's live state and
the webhook outbox, like the controller), reconcile the routers listed in the controller state
(``--routers``, for routers not sharing the Redis), and deliver the outbox themselves (bounded
wait) when no controller or ``router webhooks`` worker holds it: so they take effect within
seconds and their webhooks reach the experiment's receivers even when no controller is
running, without the promotion file."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from router.capture.clients import make_client
from router.capture.controlplane import ControlPlane
from router.promotion import machine, outbox
from router.promotion.approval import Questionnaire
from router.promotion.audit import Problem, compare_copies, verify_chain
from router.promotion.commit import commit_and_apply
from router.promotion.config import PromotionConfig
from router.promotion.machine import TransitionError
from router.promotion.routers import Applied, RouterFleet
from router.promotion.state import State, Transition
from router.promotion.store import PromotionStore

DELIVERY_WAIT_S = 60.0  # a CLI action's bounded wait for its webhooks (the rest stays queued)


class NoExperiment(Exception):
    """No controller state for this experiment."""


@dataclass
class ActionResult:
    state: State
    records: list[dict[str, Any]]
    applied: list[Applied] = field(default_factory=list)
    delivery: outbox.Pass | None = None  # None: another deliverer (the controller) sends them


async def _act(
    redis_url: str,
    experiment: str,
    cfg: PromotionConfig,
    fn: Callable[[State], Transition],
    token: str | None = None,
) -> ActionResult:
    r = make_client(redis_url, timeout=5.0)
    try:
        store = PromotionStore(r, experiment, cfg.audit.dir)
        state = await store.load()
        if state is None:
            raise NoExperiment(f"no promotion state for experiment {experiment!r}")
        rc = cfg.routers
        fleet = RouterFleet(
            state.routers,
            token if token is not None else os.environ.get(rc.token_env, ""),
            prefix=rc.admin_prefix,
            timeout_s=rc.timeout_s,
            retries=rc.retries,
        )
        async with fleet:

            def step(cur: State | None) -> Transition:
                if cur is None:
                    raise NoExperiment(f"no promotion state for experiment {experiment!r}")
                return fn(cur)

            done = await commit_and_apply(store, step, fleet=fleet, actor="operator")
        assert done is not None
        t, records, applied = done
        delivery = await outbox.Deliverer(r, experiment).deliver_now(DELIVERY_WAIT_S)
        return ActionResult(t.state, records, applied, delivery)
    finally:
        await r.aclose()


async def rollback(
    redis_url: str, experiment: str, cfg: PromotionConfig, *, by: str, reason: str, now: float
) -> ActionResult:
    return await _act(
        redis_url,
        experiment,
        cfg,
        lambda s: machine.rollback(
            s,
            actor=f"operator:{by}",
            reasons=[f"manual rollback: {reason}"],
            now=now,
            data={"source": "manual"},
        ),
    )


async def resume(
    redis_url: str, experiment: str, cfg: PromotionConfig, *, by: str, now: float
) -> ActionResult:
    return await _act(
        redis_url, experiment, cfg, lambda s: machine.resume(s, actor=f"operator:{by}", now=now)
    )


async def approve(
    redis_url: str,
    experiment: str,
    cfg: PromotionConfig,
    *,
    reviewer: str,
    answers: Questionnaire,
    now: float,
) -> ActionResult:
    return await _act(
        redis_url,
        experiment,
        cfg,
        lambda s: machine.approve(s, reviewer=reviewer, answers=answers, now=now),
    )


async def reject(
    redis_url: str, experiment: str, cfg: PromotionConfig, *, reviewer: str, reason: str, now: float
) -> ActionResult:
    return await _act(
        redis_url,
        experiment,
        cfg,
        lambda s: machine.reject(s, reviewer=reviewer, reason=reason, now=now),
    )


async def status(redis_url: str, experiment: str) -> dict[str, Any]:
    r = make_client(redis_url, timeout=5.0)
    try:
        store = PromotionStore(r, experiment)
        state = await store.load()
        if state is None:
            raise NoExperiment(f"no promotion state for experiment {experiment!r}")
        holder: bytes | str | None = await r.get(store.keys.lease)
        head = await store.head()
        plane = ControlPlane(r, experiment)
        fleet_raw = await r.get(store.keys.key("promotion:fleet"))
        return {
            "state": state.to_json(),
            "target": {
                "split": machine.desired(state).split,
                "mirror": machine.desired(state).mirror,
            },
            "lease_holder": holder.decode() if isinstance(holder, bytes) else holder,
            "audit_records": head.count if head else 0,
            "metrics": await store.metrics(),
            "live": await plane.read_live(),
            "replicas": await plane.replicas(),
            "convergence": orjson.loads(fleet_raw) if fleet_raw else None,
            "outbox": outbox.summary(await outbox.entries(r, experiment)),
        }
    finally:
        await r.aclose()


@dataclass
class VerifyResult:
    records: int
    problems: list[Problem]
    mirror_checked: bool


async def verify(redis_url: str | None, experiment: str, mirror: str | None) -> VerifyResult:
    """Verify the Redis chain (with its head) and, when given, the JSONL mirror against it."""
    problems: list[Problem] = []
    count = 0
    primary: list[dict[str, Any] | None] = []
    if redis_url is not None:
        r = make_client(redis_url, timeout=5.0)
        try:
            store = PromotionStore(r, experiment)
            primary = await store.records()
            head = await store.head()
        finally:
            await r.aclose()
        count = len(primary)
        problems += verify_chain(primary, head)
    copy: list[dict[str, Any] | None] = []
    if mirror is not None and os.path.exists(mirror):
        store_m = PromotionStore(None, experiment)
        store_m.mirror_path = Path(mirror)
        copy = store_m.mirror_records()
        mp = verify_chain(copy)
        problems += [Problem(p.position, p.kind, f"(mirror {mirror}) {p.detail}") for p in mp]
        if redis_url is not None:
            problems += [
                Problem(p.position, p.kind, f"(redis vs mirror) {p.detail}")
                for p in compare_copies(primary, copy)
            ]
        else:
            count = len(copy)
    return VerifyResult(count, problems, mirror is not None and os.path.exists(mirror))


__all__ = [
    "ActionResult",
    "NoExperiment",
    "TransitionError",
    "VerifyResult",
    "approve",
    "reject",
    "resume",
    "rollback",
    "status",
    "verify",
]
