"""Controller state in Redis, committed atomically with its audit records.

Keys (per experiment):

- ``<exp>:promotion:state``: the :class:`~router.promotion.state.State` as JSON.
- ``<exp>:audit``: a Redis list of hash-chained audit records (canonical JSON), append-only.
- ``<exp>:audit:head``: ``{"count", "hash"}`` of the chain, updated in the same transaction.
- ``<exp>:promotion:metrics``: counters (webhooks delivered/retried/failed/dropped, rollbacks).
- ``<exp>:promotion:running``: the running state of the current step's always-valid gates (the
  intersection of each gate's confidence sequence over the controller's looks, see
  :func:`router.analysis.gates.running.apply_running`), tagged with the step it belongs to.

:meth:`PromotionStore.update` is optimistic: it WATCHes the state (and the lease, when a token is
given), computes the transition from the state it read, and commits state + audit + head in one
MULTI/EXEC. A concurrent change (an approval from the CLI, another controller) makes it retry on
the new state, so a transition is never applied twice. The JSONL mirror is appended from the
Redis list (by position) after each commit, so it catches up after a crash too.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from redis.exceptions import WatchError

from router.promotion.audit import GENESIS, Head, canonical_json, chain_record
from router.promotion.lease import lease_key
from router.promotion.state import State, Transition


class LeaseLost(Exception):
    """The commit was refused because this process no longer holds the lease."""


class ConflictError(Exception):
    """The state kept changing underneath; the transition was not applied."""


def state_key(experiment: str) -> str:
    return f"{experiment}:promotion:state"


def audit_key(experiment: str) -> str:
    return f"{experiment}:audit"


def head_key(experiment: str) -> str:
    return f"{experiment}:audit:head"


def metrics_key(experiment: str) -> str:
    return f"{experiment}:promotion:metrics"


def running_key(experiment: str) -> str:
    return f"{experiment}:promotion:running"


def webhooks_done_key(experiment: str) -> str:
    return f"{experiment}:promotion:webhooks_done"


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
        self.mirror_path = (
            Path(audit_dir) / f"{experiment}.audit.jsonl" if audit_dir is not None else None
        )

    async def load(self) -> State | None:
        raw = await self.redis.get(state_key(self.experiment))
        return State.from_json(orjson.loads(raw)) if raw else None

    async def head(self) -> Head | None:
        raw = await self.redis.get(head_key(self.experiment))
        if not raw:
            return None
        d = orjson.loads(raw)
        return Head(int(d["count"]), str(d["hash"]))

    async def records(self) -> list[dict[str, Any] | None]:
        return [parse_record(r) for r in await self.redis.lrange(audit_key(self.experiment), 0, -1)]

    async def update(
        self,
        fn: Callable[[State | None], Transition | None],
        *,
        lease_token: str | None = None,
        now: Callable[[], float] = time.time,
        attempts: int = 20,
    ) -> tuple[Transition, list[dict[str, Any]]] | None:
        """Apply ``fn(current state)``; ``None`` from ``fn`` means nothing to do.

        Returns the committed transition and its audit records."""
        exp = self.experiment
        keys = [state_key(exp), head_key(exp)]
        if lease_token is not None:
            keys.append(lease_key(exp))
        async with self.redis.pipeline(transaction=True) as pipe:
            for _ in range(attempts):
                try:
                    await pipe.watch(*keys)
                    if lease_token is not None:
                        holder = _decode(await pipe.get(lease_key(exp)))
                        if holder != lease_token:
                            raise LeaseLost(f"lease held by {holder}")
                    raw = await pipe.get(state_key(exp))
                    current = State.from_json(orjson.loads(raw)) if raw else None
                    t = fn(current)
                    if t is None:
                        await pipe.reset()
                        return None
                    head_raw = await pipe.get(head_key(exp))
                    head: dict[str, Any] = (
                        orjson.loads(head_raw) if head_raw else {"count": 0, "hash": GENESIS}
                    )
                    count, prev = int(head["count"]), str(head["hash"])
                    records = []
                    ts = now()
                    for ev in t.events:
                        body = {
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
                                t.state.rollback_target.to_json()
                                if t.state.rollback_target
                                else None
                            ),
                            "data": ev.data,
                        }
                        rec = chain_record(orjson.loads(orjson.dumps(body)), seq=count, prev=prev)
                        records.append(rec)
                        count += 1
                        prev = rec["hash"]
                    pipe.multi()
                    pipe.set(state_key(exp), orjson.dumps(t.state.to_json()))
                    if records:
                        pipe.rpush(audit_key(exp), *[canonical_json(r) for r in records])
                        pipe.set(head_key(exp), orjson.dumps({"count": count, "hash": prev}))
                    await pipe.execute()
                except WatchError:
                    continue
                if records:
                    self.sync_mirror_records(records)
                return t, records
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
        have = self._mirror_lines()
        raw = await self.redis.lrange(audit_key(self.experiment), have, -1)
        recs = [r for r in (parse_record(x) for x in raw) if r is not None]
        return self.sync_mirror_records(recs)

    def mirror_records(self) -> list[dict[str, Any] | None]:
        if self.mirror_path is None or not self.mirror_path.exists():
            return []
        return [
            parse_record(line)
            for line in self.mirror_path.read_bytes().splitlines()
            if line.strip()
        ]

    async def mark_webhook_done(self, seq: int) -> None:
        await self.redis.sadd(webhooks_done_key(self.experiment), seq)

    async def webhooks_pending(self, events: frozenset[str]) -> list[dict[str, Any]]:
        """Audit records of webhook events whose delivery has not finished."""
        done = {int(x) for x in await self.redis.smembers(webhooks_done_key(self.experiment))}
        return [
            r
            for r in await self.records()
            if r is not None and r.get("event") in events and r.get("seq") not in done
        ]

    async def load_running(self, step: tuple[str, int, float]) -> dict[str, Any] | None:
        """The running gate state saved for ``step`` (stage, step, start), or None (another
        step's state is stale: a new step starts a new sequence)."""
        raw = await self.redis.get(running_key(self.experiment))
        doc = parse_record(raw) if raw else None
        if doc is None or doc.get("step") != [step[0], step[1], step[2]]:
            return None
        gates = doc.get("gates")
        return gates if isinstance(gates, dict) else None

    async def save_running(self, step: tuple[str, int, float], gates: dict[str, Any]) -> None:
        """Save the running gate state of ``step``. Not part of the audited transaction: losing
        an update only loosens the intersection, every look's interval is valid on its own."""
        doc = {"step": [step[0], step[1], step[2]], "gates": gates}
        await self.redis.set(running_key(self.experiment), orjson.dumps(doc))

    async def count(self, name: str, n: int = 1) -> None:
        await self.redis.hincrby(metrics_key(self.experiment), name, n)

    async def metrics(self) -> dict[str, int]:
        raw = await self.redis.hgetall(metrics_key(self.experiment))
        return {_decode(k) or "": int(v) for k, v in raw.items()}
