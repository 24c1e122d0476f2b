"""An experiment's control plane in the Redis the fleet shares: the versioned live state, the
audit chain, the webhook outbox and the replicas' heartbeats.

The **live state** is one JSON document (``ControlKeys.live``): ``version`` (an integer that
only grows), ``updated_at``, ``updated_by``, ``note`` and the live fields (``split``,
``mirror``, ``champion``, ``challenger``, and whatever later issues add: the document is a
generic dict, writers change the keys they own and keep the rest). It changes only by
compare-and-set on its version (:meth:`ControlPlane.commit`), in one Lua script that also
appends the change's audit records to the chain (``audit`` + ``audit:head``), writes one
outbox entry per record when the experiment has webhook receivers, optionally writes the
promotion controller's state (compared by content, fenced by its lease) and publishes the new
version on ``live:changes``. One script on keys of one hash slot, so it is atomic on a single
Redis and on Redis Cluster alike (no WATCH, which cluster pipelines do not offer).

Replicas apply a version by polling ``live`` and by listening on the channel (see
:mod:`router.sidecar.fleet`), and report what they applied in ``replicas`` (heartbeats), which
the controller reads to wait for convergence.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from router.capture.chain import GENESIS, canonical_json, chain_record
from router.capture.keys import ControlKeys

COMMIT_LUA = """
-- KEYS: 1 live, 2 head, 3 audit, 4 outbox, 5 webhooks, 6 promotion state, 7 lease
-- ARGV: 1 live version expected ('' = live not written), 2 new live JSON,
--       3 sha1 of the state expected ('' = state not written, 'nil' = absent), 4 new state,
--       5 lease token ('' = not fenced), 6 sha1 of the head read ('nil' = absent), 7 new head,
--       8 channel, 9 record count, then the records, then (id, entry) per outbox entry
if ARGV[5] ~= '' then
  local holder = redis.call('GET', KEYS[7])
  if holder ~= ARGV[5] then return {'lease', holder or ''} end
end
if ARGV[3] ~= '' then
  local cur = redis.call('GET', KEYS[6])
  local h = 'nil'
  if cur then h = redis.sha1hex(cur) end
  if h ~= ARGV[3] then return {'state', ''} end
end
local live_version = nil
if ARGV[1] ~= '' then
  local cur = redis.call('GET', KEYS[1])
  local v = 0
  if cur then v = tonumber(cjson.decode(cur)['version']) or 0 end
  if v ~= tonumber(ARGV[1]) then return {'live', cur or ''} end
end
local n = tonumber(ARGV[9])
if n > 0 then
  local head = redis.call('GET', KEYS[2])
  local h = 'nil'
  if head then h = redis.sha1hex(head) end
  if h ~= ARGV[6] then return {'head', ''} end
end
if ARGV[3] ~= '' then redis.call('SET', KEYS[6], ARGV[4]) end
if ARGV[1] ~= '' then
  redis.call('SET', KEYS[1], ARGV[2])
  redis.call('PUBLISH', ARGV[8], tostring(tonumber(ARGV[1]) + 1))
end
if n > 0 then
  for i = 1, n do redis.call('RPUSH', KEYS[3], ARGV[9 + i]) end
  redis.call('SET', KEYS[2], ARGV[7])
  if redis.call('EXISTS', KEYS[5]) == 1 then
    local j = 10 + n
    while j < #ARGV do
      redis.call('HSET', KEYS[4], ARGV[j], ARGV[j + 1])
      j = j + 2
    end
  end
end
return {'ok', ''}
"""


def is_cluster_client(client: Any) -> bool:
    """True for redis-py's ``RedisCluster`` (asyncio or blocking)."""
    return type(client).__name__ == "RedisCluster"


def _sha1(raw: bytes | None) -> str:
    return "nil" if raw is None else hashlib.sha1(raw).hexdigest()  # a CAS tag, not security


class LiveConflict(Exception):
    """The live state's version is not the one the change was based on."""

    def __init__(self, current: dict[str, Any] | None) -> None:
        self.current = current
        version = current.get("version") if current else None
        super().__init__(f"live state changed underneath (now version {version})")


class StateConflict(Exception):
    """The promotion state is not the one the transition was computed from."""


class LeaseMismatch(Exception):
    """The commit was fenced off: the caller no longer holds the controller lease."""

    def __init__(self, holder: str) -> None:
        self.holder = holder
        super().__init__(f"lease held by {holder or 'nobody'}")


class CommitContended(Exception):
    """The audit chain kept moving underneath (more than ``attempts`` appends in between)."""


@dataclass
class Committed:
    records: list[dict[str, Any]] = field(default_factory=list)
    live: dict[str, Any] | None = None  # the live document written, if any


def parse_doc(raw: bytes | str | None) -> dict[str, Any] | None:
    if not raw:
        return None
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None


def outbox_entry(rec: dict[str, Any], now: float) -> dict[str, Any]:
    """A fresh outbox entry for an audit record (delivered by the promotion deliverer)."""
    return {"id": f"{rec['experiment']}:{rec['seq']}", "record": rec, "created_at": now,
            "attempts": 0, "failed": False, "last_error": None, "delivered_to": []}  # fmt: skip


def live_fields_differ(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """The keys of ``b`` (meta keys aside) whose value differs in ``a``."""
    meta = {"version", "updated_at", "updated_by", "note"}
    return {k: v for k, v in b.items() if k not in meta and a.get(k) != v}


class ControlPlane:
    """Reads and compare-and-set writes of one experiment's control keys (asyncio client:
    ``redis.asyncio.Redis`` or ``RedisCluster``, see :func:`router.capture.clients.make_client`)."""

    def __init__(self, client: Any, experiment: str) -> None:
        self.client = client
        self.experiment = experiment
        self.keys = ControlKeys(experiment, cluster=is_cluster_client(client))
        self._commit = client.register_script(COMMIT_LUA)

    async def read_live(self) -> dict[str, Any] | None:
        return parse_doc(await self.client.get(self.keys.live))

    async def commit(
        self,
        bodies: list[dict[str, Any]],
        *,
        live: dict[str, Any] | None = None,
        live_expected: int | None = None,
        state: bytes | None = None,
        state_expected: bytes | None = None,
        check_state: bool = False,
        lease_token: str | None = None,
        now: float | None = None,
        attempts: int = 20,
        min_version: int = 0,
    ) -> Committed:
        """Append ``bodies`` to the audit chain (chained here from the current head) and, in the
        same script, write ``live`` (when ``live_expected`` is its current version; the new
        document gets version ``live_expected + 1``, or ``min_version`` if higher) and
        ``state`` (when ``check_state``: only if the stored state still equals
        ``state_expected``).

        Raises :class:`LiveConflict`, :class:`StateConflict` or :class:`LeaseMismatch`; a
        concurrent append to the chain alone is retried here."""
        k = self.keys
        ts = time.time() if now is None else now
        doc: dict[str, Any] | None = None
        if live is not None:
            if live_expected is None:
                raise ValueError("live_expected is required to write the live state")
            doc = dict(live, version=max(live_expected + 1, min_version))
        for _ in range(attempts):
            head_raw = await self.client.get(k.head)
            head = parse_doc(head_raw) or {"count": 0, "hash": GENESIS}
            count, prev = int(head["count"]), str(head["hash"])
            records = []
            for body in bodies:
                rec = chain_record(orjson.loads(orjson.dumps(body)), seq=count, prev=prev)
                records.append(rec)
                count += 1
                prev = rec["hash"]
            args: list[Any] = [
                "" if doc is None else str(live_expected),
                b"" if doc is None else orjson.dumps(doc),
                _sha1(state_expected) if check_state else "",
                state if (check_state and state is not None) else b"",
                lease_token or "",
                _sha1(head_raw),
                orjson.dumps({"count": count, "hash": prev}),
                k.channel,
                len(records),
                *[canonical_json(r) for r in records],
            ]
            for rec in records:
                args += [f"{self.experiment}:{rec['seq']}", orjson.dumps(outbox_entry(rec, ts))]
            keys = [k.live, k.head, k.audit, k.outbox, k.webhooks, k.promotion_state, k.lease]
            kind, detail = await self._commit(keys=keys, args=args)
            kind = kind.decode() if isinstance(kind, bytes) else str(kind)
            if kind == "ok":
                return Committed(records, doc)
            if kind == "head":
                continue
            if kind == "live":
                raise LiveConflict(parse_doc(detail))
            if kind == "state":
                raise StateConflict(self.experiment)
            holder = detail.decode() if isinstance(detail, bytes) else str(detail)
            raise LeaseMismatch(holder)
        raise CommitContended(f"{self.experiment}: the audit chain moved {attempts} times")

    async def change_live(
        self,
        changes: dict[str, Any],
        *,
        expected: int | None,
        actor: str,
        note: str = "",
        event: str = "live_changed",
        data: dict[str, Any] | None = None,
        now: float | None = None,
        min_version: int = 0,
    ) -> Committed:
        """Compare-and-set the live state: ``changes`` applied onto the current document, only
        if its version is ``expected`` (``None``: whatever the current version is, re-read and
        retried on a conflict), audited as ``event`` (and queued in the outbox). A change to
        the values already there writes nothing (no new version, no audit record)."""
        while True:
            current = await self.read_live()
            cur_version = int(current["version"]) if current else 0
            if expected is not None and cur_version != expected:
                raise LiveConflict(current)
            ts = time.time() if now is None else now
            base = current or {}
            new = dict(base, **changes, updated_at=ts, updated_by=actor, note=note)
            if current is not None and not live_fields_differ(base, new):
                return Committed([], current)  # already so: no new version, nothing audited
            body = {"v": 1, "experiment": self.experiment, "ts": ts, "event": event,
                    "actor": actor, "stage_from": None, "stage_to": None, "step": None,
                    "split": new.get("split"),
                    "data": dict(data or {}, live_version=max(cur_version + 1, min_version),
                                 note=note,
                                 changes=live_fields_differ(base, new))}  # fmt: skip
            try:
                return await self.commit([body], live=new, live_expected=cur_version, now=ts,
                                         min_version=min_version)  # fmt: skip
            except LiveConflict:
                if expected is not None:
                    raise

    async def heartbeat(self, replica: str, info: dict[str, Any]) -> None:
        await self.client.hset(self.keys.replicas, replica, orjson.dumps(info))

    async def forget(self, replica: str) -> None:
        await self.client.hdel(self.keys.replicas, replica)

    async def replicas(self) -> dict[str, dict[str, Any]]:
        raw = await self.client.hgetall(self.keys.replicas)
        out = {}
        for k, v in raw.items():
            doc = parse_doc(v)
            if doc is not None:
                out[k.decode() if isinstance(k, bytes) else str(k)] = doc
        return out

    async def webhooks(self) -> dict[str, Any] | None:
        return parse_doc(await self.client.get(self.keys.webhooks))
