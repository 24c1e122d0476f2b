"""Controller state in Redis, committed atomically with its audit records, the fleet's live
state and the webhook outbox.

Keys (per experiment; ``{<exp>}:...`` on Redis Cluster, see
:class:`router.capture.keys.ControlKeys`, so every key of a commit is in one hash slot):

- ``<exp>:promotion:state``: the :class:`~router.promotion.state.State` as JSON.
- ``<exp>:audit``: a Redis list of hash-chained audit records (canonical JSON), append-only.
- ``<exp>:audit:head``: ``{"count", "hash"}`` of the chain, updated in the same transaction.
- ``<exp>:promotion:metrics``: counters (webhooks delivered/retried/failed/dropped, rollbacks).
- ``<exp>:live``: the fleet's live state (split, mirror, pins), set to the state's target in
  the same commit (see :mod:`router.capture.controlplane`), and ``<exp>:outbox``: one webhook
  entry per audit record, delivered by :mod:`router.promotion.outbox`.
- ``<exp>:promotion:running``: the running state of the current step's always-valid gates (the
  intersection of each gate's confidence sequence over the controller's looks, see
  :func:`router.analysis.gates.running.apply_running`), tagged with the step it belongs to.

:meth:`PromotionStore.update` is optimistic: it reads the state, computes the transition from
it, and commits state + audit + head + live state + outbox in one Lua script that first checks
the state is unchanged (by content), the live state's version and, when a token is given, the
lease (fencing). A concurrent change (an approval from the CLI, another controller, an admin
change) makes it retry on the new state, so a transition is never applied twice. A script
rather than WATCH/MULTI so the same code runs on Redis Cluster. The JSONL mirror is appended
from the Redis list (by position) after each commit, so it catches up after a crash too.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from router.capture.controlplane import (
    ControlPlane,
    LeaseMismatch,
    LiveConflict,
    StateConflict,
    is_cluster_client,
)
from router.capture.keys import ControlKeys
from router.promotion.audit import Head, canonical_json
from router.promotion.machine import desired
from router.promotion.state import State, Target, Transition


class LeaseLost(Exception):
    """The commit was refused because this process no longer holds the lease."""


class ConflictError(Exception):
    """The state kept changing underneath; the transition was not applied."""


def state_key(experiment: str, cluster: bool = False) -> str:
    return ControlKeys(experiment, cluster=cluster).promotion_state


def audit_key(experiment: str, cluster: bool = False) -> str:
    return ControlKeys(experiment, cluster=cluster).audit


def head_key(experiment: str, cluster: bool = False) -> str:
    return ControlKeys(experiment, cluster=cluster).head


def metrics_key(experiment: str, cluster: bool = False) -> str:
    return ControlKeys(experiment, cluster=cluster).metrics


def running_key(experiment: str, cluster: bool = False) -> str:
    return ControlKeys(experiment, cluster=cluster).running


def target_fields(target: Target) -> dict[str, Any]:
    """The live-state fields of a router target (the keys the controller owns)."""
    out: dict[str, Any] = {
        "split": target.split,
        "mirror": target.mirror,
        "champion": target.champion.to_json(),
        "challenger": target.challenger.to_json(),
    }
    if target.challengers:  # a contest: every challenger's shares (the routers lay them out)
        out["shares"] = {s.name: [s.split, s.mirror] for s in target.challengers}
    return out


def live_changes(live: dict[str, Any], target: Target) -> dict[str, Any]:
    """The fields of ``live`` that differ from ``target`` (empty: already there)."""
    out = {}
    for k, v in target_fields(target).items():
        cur = live.get(k)
        if k == "shares":
            if cur != v:
                out[k] = v
        elif isinstance(v, float):
            if not isinstance(cur, (int, float)) or abs(float(cur) - v) > 1e-9:
                out[k] = v
        elif not isinstance(cur, dict) or {"url": str(cur.get("url", "")).rstrip("/"),
                                           "version": str(cur.get("version"))} != {
            "url": v["url"].rstrip("/"), "version": v["version"]}:  # fmt: skip
            out[k] = v
    return out


def _decode(v: Any) -> str | None:
    if v is None:
        return None
    return v.decode() if isinstance(v, bytes) else str(v)


def parse_record(raw: bytes | str) -> dict[str, Any] | None:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None


class PromotionStore:
    def __init__(self, redis: Any, experiment: str, audit_dir: str | Path | None = None) -> None:
        self.redis = redis
        self.experiment = experiment
        self.keys = ControlKeys(experiment, cluster=is_cluster_client(redis))
        self.plane = ControlPlane(redis, experiment) if redis is not None else None
        self.last_live: dict[str, Any] | None = None  # live document of the last commit
        self.mirror_path = (
            Path(audit_dir) / f"{experiment}.audit.jsonl" if audit_dir is not None else None
        )

    async def load(self) -> State | None:
        raw = await self.redis.get(self.keys.promotion_state)
        return State.from_json(orjson.loads(raw)) if raw else None

    async def head(self) -> Head | None:
        raw = await self.redis.get(self.keys.head)
        if not raw:
            return None
        d = orjson.loads(raw)
        return Head(int(d["count"]), str(d["hash"]))

    async def records(self) -> list[dict[str, Any] | None]:
        return [parse_record(r) for r in await self.redis.lrange(self.keys.audit, 0, -1)]

    async def update(
        self,
        fn: Callable[[State | None], Transition | None],
        *,
        lease_token: str | None = None,
        now: Callable[[], float] = time.time,
        attempts: int = 20,
        actor: str = "controller",
    ) -> tuple[Transition, list[dict[str, Any]]] | None:
        """Apply ``fn(current state)``; ``None`` from ``fn`` means nothing to do.

        The fleet's live state (when there is one: routers sharing this Redis created it) is
        set to the new state's target in the same commit. Returns the committed transition and
        its audit records."""
        exp = self.experiment
        assert self.plane is not None
        if lease_token is not None:  # fenced even when there turns out to be nothing to do
            holder = _decode(await self.redis.get(self.keys.lease))
            if holder != lease_token:
                raise LeaseLost(f"lease held by {holder}")
        for _ in range(attempts):
            raw = await self.redis.get(self.keys.promotion_state)
            current = State.from_json(orjson.loads(raw)) if raw else None
            t = fn(current)
            if t is None:
                return None
            ts = now()
            bodies = [
                {
                    "v": 1,
                    "experiment": exp,
                    "ts": ts,
                    "event": ev.event,
                    "actor": ev.actor,
                    "stage_from": ev.stage_from,
                    "stage_to": ev.stage_to,
                    "step": ev.step,
                    "split": ev.split,
                    "versions": {
                        "champion": t.state.champion.version,
                        "challenger": t.state.challenger.version,
                    },
                    "rollback_target": (
                        t.state.rollback_target.to_json() if t.state.rollback_target else None
                    ),
                    "data": ev.data,
                }
                for ev in t.events
            ]
            live = await self.plane.read_live()
            new_live: dict[str, Any] | None = None
            if live is not None:
                changes = live_changes(live, desired(t.state))
                if changes:
                    note = "; ".join(f"promotion {e.event}" for e in t.events) or "promotion"
                    new_live = dict(live, **changes, updated_at=ts,
                                    updated_by=(t.events[0].actor if t.events else actor),
                                    note=note[:500])  # fmt: skip
            try:
                done = await self.plane.commit(
                    bodies,
                    live=new_live,
                    live_expected=int(live["version"]) if new_live is not None and live else None,
                    state=orjson.dumps(t.state.to_json()),
                    state_expected=raw,
                    check_state=True,
                    lease_token=lease_token,
                    now=ts,
                )
            except (StateConflict, LiveConflict):
                continue
            except LeaseMismatch as exc:
                raise LeaseLost(str(exc)) from None
            self.last_live = done.live
            if done.records:  # (file lock, write and fsync: off the event loop)
                wrote = await asyncio.to_thread(self.sync_mirror_records, done.records)
                if not wrote:  # a gap: another writer's earlier record is not mirrored yet
                    await self.sync_mirror()  # (filled from Redis, in order)
            return t, done.records
        raise ConflictError(f"{exp}: state changed {attempts} times while applying a transition")

    def _mirror_lines(self) -> int:
        if self.mirror_path is None or not self.mirror_path.exists():
            return 0
        with open(self.mirror_path, "rb") as fh:
            return sum(1 for _ in fh)

    def sync_mirror_records(self, records: list[dict[str, Any]]) -> int:
        """Append those of ``records`` (consecutive, by seq) that the mirror lacks, under a file
        lock so a controller and a CLI command on one machine never write a record twice."""
        if self.mirror_path is None or not records:
            return 0
        self.mirror_path.parent.mkdir(parents=True, exist_ok=True)
        lock = self.mirror_path.with_name(self.mirror_path.name + ".lock")
        with open(lock, "a+") as lk:
            fcntl.flock(lk, fcntl.LOCK_EX)
            try:
                have = self._mirror_lines()
                first = int(records[0]["seq"])
                if not first <= have < first + len(records):
                    return 0  # already there, or a gap: sync_mirror() fills from the start
                missing = records[have - first :]
                with open(self.mirror_path, "ab") as fh:
                    for r in missing:
                        fh.write(canonical_json(r) + b"\n")
                    fh.flush()
                    os.fsync(fh.fileno())
                return len(missing)
            finally:
                fcntl.flock(lk, fcntl.LOCK_UN)

    async def sync_mirror(self) -> int:
        """Append every record the JSONL mirror is missing (by position); returns how many."""
        if self.mirror_path is None:
            return 0
        have = await asyncio.to_thread(self._mirror_lines)
        raw = await self.redis.lrange(self.keys.audit, have, -1)
        recs = [r for r in (parse_record(x) for x in raw) if r is not None]
        return await asyncio.to_thread(self.sync_mirror_records, recs)

    def mirror_records(self) -> list[dict[str, Any] | None]:
        if self.mirror_path is None or not self.mirror_path.exists():
            return []
        return [
            parse_record(line)
            for line in self.mirror_path.read_bytes().splitlines()
            if line.strip()
        ]

    async def load_running(self, step: tuple[str, int, float]) -> dict[str, Any] | None:
        """The running gate state saved for ``step`` (stage, step, start), or None (another
        step's state is stale: a new step starts a new sequence)."""
        raw = await self.redis.get(self.keys.running)
        doc = parse_record(raw) if raw else None
        if doc is None or doc.get("step") != [step[0], step[1], step[2]]:
            return None
        gates = doc.get("gates")
        return gates if isinstance(gates, dict) else None

    async def save_running(self, step: tuple[str, int, float], gates: dict[str, Any]) -> None:
        """Save the running gate state of ``step``. Not part of the audited transaction: losing
        an update only loosens the intersection, every look's interval is valid on its own."""
        doc = {"step": [step[0], step[1], step[2]], "gates": gates}
        await self.redis.set(self.keys.running, orjson.dumps(doc))

    async def count(self, name: str, n: int = 1) -> None:
        await self.redis.hincrby(self.keys.metrics, name, n)

    async def metrics(self) -> dict[str, int]:
        raw = await self.redis.hgetall(self.keys.metrics)
        return {_decode(k) or "": int(v) for k, v in raw.items()}
