"""One worker's view of the fleet-wide live state in Redis (see
:mod:`router.capture.controlplane` for the document and its compare-and-set).

At start-up (before the worker reports ready) the follower reads the live state from Redis.
None there yet: the config file bootstraps it (version 1, audited as ``live_created``), unless
this replica has a last known state on disk, which is then written back (Redis lost its data:
the ramp is restored, never reset to the config file). Redis unreachable: the last known state
on local disk is used and ``/readyz`` says so (``checks.control.source = "last_known"``,
metric ``router_control_last_known``); with no last known state either the worker serves the
config file's state but stays **not ready** (503) until Redis answers, since it cannot know
whether a ramp is under way.

Afterwards it applies every new version within ``control.poll_interval_s`` (default 0.5 s):
it listens on the experiment's ``live:changes`` channel, which wakes it at once, and reads the
document at least every poll interval, so a lost message or a broken subscription delays a
change by one interval at most. Every applied version is written to the last known state file
(write + rename) and reported in a heartbeat (``replicas`` hash: worker id, version, time,
source) every ``control.heartbeat_interval_s``, which the promotion controller reads to wait
for convergence.

Applying is :meth:`RouterApp.apply_state` (one swap of one object); nothing here runs on
the request path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from router.capture.clients import is_cluster_url, make_client
from router.capture.controlplane import ControlPlane, LiveConflict, parse_doc
from router.config import RouterConfig, parse_redis_url
from router.metrics import Metrics
from router.sidecar.control import LiveState

log = logging.getLogger("router.fleet")


def replica_id() -> str:
    """``<host>:<pid>``: one heartbeat per worker process (the host is the pod name)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def redis_origin(url: str) -> str:
    """Which Redis a state came from (hosts, ports and path; never credentials)."""
    t = parse_redis_url(url)
    path = urlsplit(url).path if t.scheme != "unix" else url
    return ",".join(f"{h}:{p}" for h, p in t.seeds) + path


class LastKnown:
    """The last applied live state document on local disk (atomic write + rename), tagged with
    the Redis it came from: a file written against another Redis (a new environment) is not
    this experiment's ramp and is ignored (logged)."""

    def __init__(self, path: Path, origin: str) -> None:
        self.path = path
        self.origin = origin

    def save(self, doc: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(orjson.dumps(dict(doc, saved_at=time.time(), origin=self.origin)))
        os.replace(tmp, self.path)

    def load(self) -> dict[str, Any] | None:
        try:
            doc = parse_doc(self.path.read_bytes())
        except OSError:
            return None
        if doc is None or not isinstance(doc.get("version"), int):
            return None
        if doc.pop("origin", None) != self.origin:
            log.warning("live state: ignoring %s, written against another Redis", self.path)
            return None
        doc.pop("saved_at", None)
        return doc


def state_path(cfg: RouterConfig) -> Path:
    base = cfg.control.state_dir or str(Path(cfg.capture.data_dir) / "control")
    return Path(base) / f"{cfg.experiment.name}.live.json"


class FleetFollower:
    """Follows the experiment's live state in Redis for one worker (see the module doc)."""

    def __init__(
        self,
        cfg: RouterConfig,
        redis_url: str,
        metrics: Metrics,
        apply: Callable[[LiveState], None],
        bootstrap: LiveState,
    ) -> None:
        c = cfg.control
        self.experiment = cfg.experiment.name
        self.redis_url = redis_url
        self.metrics = metrics
        self.apply = apply
        self.bootstrap = bootstrap
        self.poll_s = c.poll_interval_s
        self.heartbeat_s = c.heartbeat_interval_s
        self.timeout_s = c.redis_timeout_s
        self.last_known = LastKnown(state_path(cfg), redis_origin(redis_url))
        self.client = make_client(redis_url, timeout=c.redis_timeout_s)
        self.plane = ControlPlane(self.client, self.experiment)
        self.replica = replica_id()
        self.started_at = time.time()
        self.version = 0
        self.source = "config"  # redis | last_known | config
        self.waiting = True  # no state decided yet: /readyz says 503
        self.redis_ok = False
        self.last_error: str | None = None
        self.applied_at = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()  # heartbeat now
        self._changed = asyncio.Event()  # a version was published: read now

    # ---- state --------------------------------------------------------------------------
    def _use(self, doc: dict[str, Any], source: str) -> bool:
        try:
            state = LiveState.from_json(doc)
        except (KeyError, TypeError, ValueError) as exc:
            self._error("invalid_document", f"live state v{doc.get('version')}: {exc}")
            return False
        self.apply(state)
        self.version = state.version
        self.source = source
        self.waiting = False
        self.applied_at = time.time()
        self.metrics.set("router_control_last_known", 1.0 if source == "last_known" else 0.0)
        self.metrics.set("router_control_waiting", 0.0)
        if source == "redis":
            try:
                self.last_known.save(doc)
            except OSError as exc:
                self._error("last_known_write", f"{self.last_known.path}: {exc}")
        self._wake.set()  # heartbeat now
        return True

    def _error(self, kind: str, msg: str) -> None:
        self.metrics.inc("router_control_errors", (kind,))
        if msg != self.last_error:
            log.error("live state: %s", msg)
        self.last_error = msg

    async def _sync(self) -> None:
        """Read the live state and apply it when its version differs from the applied one."""
        doc = await asyncio.wait_for(self.plane.read_live(), self.timeout_s)
        if not self.redis_ok and self.last_error is not None:
            log.warning("live state: Redis reachable again")
        self.redis_ok = True
        self.metrics.set("router_control_redis_ok", 1.0)
        if doc is None:
            doc = await self._seed()
        if int(doc.get("version", 0)) != self.version or self.source != "redis":
            if self.version and int(doc.get("version", 0)) < self.version:
                log.warning(
                    "live state: Redis has v%s, older than the applied v%d (restored from a "
                    "backup?); following Redis", doc.get("version"), self.version,
                )  # fmt: skip
            self._use(doc, "redis")

    async def _seed(self) -> dict[str, Any]:
        """No live state in Redis: restore this replica's last known one, else bootstrap from
        the config file (a new experiment). Concurrent seeders: one wins, the rest read it."""
        known = self.last_known.load()
        if known is not None:
            log.warning("live state missing in Redis; restoring this replica's last known v%d",
                        known["version"])  # fmt: skip
            fields = {k: v for k, v in known.items() if k not in ("version",)}
            event, note = "live_restored", f"restored from last known v{known['version']}"
            version = int(known["version"]) + 1  # versions keep growing across the loss
        else:
            fields = self.bootstrap.to_json()
            fields.pop("version", None)
            event, note = "live_created", "bootstrap from the config file"
            version = 1
        try:
            done = await self.plane.change_live(
                {k: v for k, v in fields.items() if k not in ("updated_at", "updated_by", "note")},
                expected=0, actor=f"router@{self.replica}", note=note, event=event,
                min_version=version,
            )  # fmt: skip
        except LiveConflict as exc:
            if exc.current is None:
                raise
            return exc.current
        assert done.live is not None
        return done.live

    async def start(self) -> None:
        """Decide the initial state (bounded by ``control.redis_timeout_s`` per attempt)."""
        self.metrics.set("router_control_waiting", 1.0)
        try:
            await self._sync()
        except Exception as exc:  # Redis unreachable (or timed out): the last known state
            self._down(exc)
            known = self.last_known.load()
            if known is not None and self._use(known, "last_known"):
                log.warning("live state: Redis unreachable (%s); serving the last known v%d from "
                            "%s", exc, self.version, self.last_known.path)  # fmt: skip
            else:
                self.apply(self.bootstrap)
                log.error("live state: Redis unreachable (%s) and no last known state at %s: "
                          "serving the config file's state, NOT READY until Redis answers",
                          exc, self.last_known.path)  # fmt: skip
        self._tasks = [
            asyncio.create_task(self._follow(), name="live-follow"),
            asyncio.create_task(self._listen(), name="live-listen"),
            asyncio.create_task(self._heartbeats(), name="live-heartbeat"),
        ]

    def _down(self, exc: BaseException) -> None:
        if self.redis_ok:
            log.error("live state: Redis unreachable: %s", exc)
        self.redis_ok = False
        self.metrics.set("router_control_redis_ok", 0.0)
        self._error("redis", f"Redis unreachable: {type(exc).__name__}: {exc}")

    async def _follow(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self.poll_s)
            self._changed.clear()
            try:
                await self._sync()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._down(exc)

    async def _listen(self) -> None:
        """Wake :meth:`_follow` on a published version (a plain connection to one node: pub/sub
        messages reach every node of a cluster)."""
        target = parse_redis_url(self.redis_url)
        url = target.node_url(0) if is_cluster_url(self.redis_url) else self.redis_url
        import redis.asyncio as aioredis

        while True:
            sub = aioredis.Redis.from_url(url, socket_connect_timeout=self.timeout_s)
            ps = sub.pubsub()
            try:
                await asyncio.wait_for(ps.subscribe(self.plane.keys.channel), self.timeout_s)
                while True:
                    msg = await ps.get_message(ignore_subscribe_messages=True, timeout=5.0)
                    if msg is not None:
                        self._changed.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # polling keeps working; re-subscribe after a pause
                log.debug("live state subscription: %s", exc)
                await asyncio.sleep(max(self.poll_s, 1.0))
            finally:  # bounded: a close must never hold up a worker's stop
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(ps.aclose(), 1.0)
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(sub.aclose(), 1.0)

    def heartbeat_doc(self) -> dict[str, Any]:
        host, _, pid = self.replica.rpartition(":")
        return {"replica": self.replica, "host": host, "pid": int(pid), "version": self.version,
                "source": self.source, "ready": not self.waiting, "ts": time.time(),
                "applied_at": self.applied_at, "started_at": self.started_at}  # fmt: skip

    async def _heartbeats(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.heartbeat_s)
            self._wake.clear()
            try:
                await asyncio.wait_for(
                    self.plane.heartbeat(self.replica, self.heartbeat_doc()), self.timeout_s
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.metrics.inc("router_control_errors", ("heartbeat",))
                log.debug("heartbeat failed: %s", exc)

    # ---- admin changes ------------------------------------------------------------------
    async def change(self, changes: dict[str, Any], *, expected: int | None, actor: str,
                     note: str) -> LiveState:  # fmt: skip
        """Compare-and-set the shared state (based on ``expected``, default the version this
        worker applied), apply it here at once; raises ``LiveConflict`` (409 for the admin API)
        or a Redis error (503)."""
        base = self.version if expected is None else expected
        done = await asyncio.wait_for(
            self.plane.change_live(changes, expected=base, actor=actor, note=note),
            self.timeout_s * 3,
        )
        assert done.live is not None
        self._use(done.live, "redis")
        return LiveState.from_json(done.live)

    def readiness(self) -> dict[str, Any]:
        return {"ok": not self.waiting, "shared": True, "source": self.source,
                "version": self.version, "redis": self.redis_ok,
                "stale": self.source == "last_known",
                "error": None if self.redis_ok else self.last_error}  # fmt: skip

    async def stop(self) -> None:
        """Stop following (bounded: a stuck Redis connection never holds up a clean stop) and
        remove this worker's heartbeat."""
        for t in self._tasks:
            t.cancel()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=3.0)
            for t in pending:
                log.warning("live state: task %s did not stop within 3 s", t.get_name())
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.plane.forget(self.replica), self.timeout_s)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.client.aclose(), self.timeout_s)
