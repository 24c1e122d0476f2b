"""A Redis lease so that one controller at a time acts for an experiment.

Acquire: ``SET key token NX PX ttl``. Renew and release run as Lua scripts that first check the
token, so a controller whose lease expired (and was taken by another) can neither extend nor
delete the new holder's lease. The holder renews every ``ttl/3``; state commits also check the
token inside their transaction (fencing), see :mod:`router.promotion.store`. One key per lease,
so it works on Redis Cluster as on a single Redis. The webhook outbox's deliverer uses the same
class on its own key.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from typing import Any

from router.capture.controlplane import is_cluster_client
from router.capture.keys import ControlKeys

RENEW_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def lease_key(experiment: str, cluster: bool = False) -> str:
    return ControlKeys(experiment, cluster=cluster).lease


def new_token() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"


class LeaseHeld(Exception):
    """Another controller holds the lease."""


class Lease:
    def __init__(
        self,
        redis: Any,
        experiment: str,
        ttl_s: float,
        token: str | None = None,
        *,
        key: str | None = None,
    ) -> None:
        self.redis = redis
        self.key = key or lease_key(experiment, is_cluster_client(redis))
        self.ttl_ms = max(int(ttl_s * 1000), 1)
        self.token = token or new_token()
        self._renew = redis.register_script(RENEW_LUA)
        self._release = redis.register_script(RELEASE_LUA)
        self.valid_until = 0.0

    @property
    def valid(self) -> bool:
        return time.monotonic() < self.valid_until

    async def try_acquire(self) -> bool:
        started = time.monotonic()
        ok = await self.redis.set(self.key, self.token, nx=True, px=self.ttl_ms)
        if ok:
            self.valid_until = started + self.ttl_ms / 1000
        return bool(ok)

    async def acquire(self, wait_s: float = 0.0, poll_s: float = 0.1) -> None:
        deadline = time.monotonic() + wait_s
        while True:
            if await self.try_acquire():
                return
            if time.monotonic() >= deadline:
                holder = await self.holder()
                raise LeaseHeld(f"lease {self.key} is held by {holder}")
            await asyncio.sleep(poll_s)

    async def renew(self) -> bool:
        started = time.monotonic()
        ok = bool(await self._renew(keys=[self.key], args=[self.token, self.ttl_ms]))
        self.valid_until = started + self.ttl_ms / 1000 if ok else 0.0
        return ok

    async def release(self) -> bool:
        self.valid_until = 0.0
        return bool(await self._release(keys=[self.key], args=[self.token]))

    async def holder(self) -> str | None:
        v = await self.redis.get(self.key)
        return v.decode() if isinstance(v, bytes) else v
