"""Capture writer: records and outcomes to Redis streams, in batches, off the hot path, lossless.

The hot path calls :meth:`CaptureWriter.submit_record` (or ``submit_outcome``), a bounded
``deque.append``: when the queue is full the item is dropped and counted, the request is never
slowed. A background task wakes every ``batch_interval_ms``, finalizes pending records (JSON
parsing, prediction extraction, contract diff, field redaction: see :mod:`router.records`) and
writes each batch with one pipelined round trip. Each stream entry has a single field ``r``
holding the record's JSON.

**Exactly once, whatever Redis does.** Every write goes through one Lua script per (stream,
batch): ``SET <stream>:batch:<batch_id> 1 NX EX dedupe_ttl_s``, and only if that key was new,
``XADD`` every entry of the batch and trim the stream (``MAXLEN ~`` and/or ``MINID ~``). A script
runs atomically, so a batch is in the stream entirely or not at all, and a batch id can never be
applied twice. When a write fails or is slower than ``write_timeout_s`` (Redis down, failing
over, overloaded), the batch goes, with its batch id, to the local spool
(:mod:`router.spooler`), and so does every later batch until the spool is drained: order is
kept. A probe pings Redis with backoff; once it answers, the spool is replayed oldest first
through the same script, so a batch whose first attempt did reach Redis (a timeout after
success) or that was replayed just before a crash is skipped, not duplicated. The spool is
bounded (``spool_max_bytes``): beyond it batches are dropped and counted.

**Keys** (the one place that names them; readers call these functions):
``<experiment>:pairs`` and ``<experiment>:outcomes`` on a single Redis; with Redis Cluster
(``redis+cluster://``) ``{<experiment>}:pairs`` and ``{<experiment>}:outcomes`` so one
experiment's streams share a hash slot while experiments spread over the cluster. With
``pair_shards: N > 1`` pairs go to N streams chosen by ``crc32(request_id) % N``:
``<experiment>:pairs:<i>``, or ``{<experiment>:<i>}:pairs`` on a cluster (a different slot per
shard, so one hot experiment spreads over the masters). :mod:`router.capture_reader` merges them
back in stream-id order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from router.config import CaptureConfig
from router.metrics import Metrics
from router.records import FinalizeOptions, PendingRecord, finalize
from router.spooler import Spool

log = logging.getLogger("router.capture")

T = TypeVar("T")
Item = tuple[str, Any]  # ("pairs" | "outcomes", PendingRecord | dict)
Group = tuple[str, str, list[bytes]]  # (stream key, batch id, payloads)
WRITE_ERRORS = (RedisError, OSError, TimeoutError)

# KEYS[1] stream, KEYS[2] batch marker; ARGV: ttl_s, maxlen|'', minid|'', payload...
# Returns the number of entries added, or -1 when the batch was already written.
WRITE_BATCH_LUA = """
if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[1]) then return -1 end
for i = 4, #ARGV do redis.call('XADD', KEYS[1], '*', 'r', ARGV[i]) end
if ARGV[2] ~= '' then redis.call('XTRIM', KEYS[1], 'MAXLEN', '~', ARGV[2]) end
if ARGV[3] ~= '' then redis.call('XTRIM', KEYS[1], 'MINID', '~', ARGV[3]) end
return #ARGV - 3
"""


# ---- key naming and clients (the single source of truth) -------------------------------------
def is_cluster_url(url: str) -> bool:
    return urlsplit(url).scheme.endswith("+cluster")


def client_url(url: str) -> str:
    """``redis+cluster://`` → ``redis://`` (the form redis-py's cluster client takes)."""
    parts = urlsplit(url)
    if parts.scheme.endswith("+cluster"):
        return urlunsplit(parts._replace(scheme=parts.scheme.removesuffix("+cluster")))
    return url


def pairs_key(experiment: str, *, cluster: bool = False, shard: int | None = None) -> str:
    if shard is None:
        return f"{{{experiment}}}:pairs" if cluster else f"{experiment}:pairs"
    return f"{{{experiment}:{shard}}}:pairs" if cluster else f"{experiment}:pairs:{shard}"


def outcomes_key(experiment: str, *, cluster: bool = False) -> str:
    return f"{{{experiment}}}:outcomes" if cluster else f"{experiment}:outcomes"


def pair_keys(experiment: str, *, cluster: bool = False, shards: int = 1) -> list[str]:
    """Every pairs stream of an experiment written with ``pair_shards = shards``."""
    if shards <= 1:
        return [pairs_key(experiment, cluster=cluster)]
    return [pairs_key(experiment, cluster=cluster, shard=i) for i in range(shards)]


def batch_marker_key(stream_key: str, batch_id: str) -> str:
    """The replay de-duplication key of one batch (same hash slot as its stream)."""
    return f"{stream_key}:batch:{batch_id}"


def stream_kind(key: str) -> str:
    return "outcomes" if key.endswith(":outcomes") else "pairs"


def make_client(url: str, timeout: float = 2.0) -> Any:
    """An asyncio client: ``redis.asyncio.Redis``, or ``RedisCluster`` for ``+cluster`` URLs.

    ``rediss://`` (TLS) and credentials in the URL (``redis://user:password@host``) are passed
    to redis-py as they are."""
    kw: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": min(1.0, timeout)}
    if is_cluster_url(url):
        from redis.asyncio.cluster import RedisCluster
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # no blind client-side retries: a failed write goes to the spool and is replayed
        # through the de-duplicating script (redirections, MOVED/ASK, are still followed)
        return RedisCluster.from_url(client_url(url), retry=Retry(NoBackoff(), 0), **kw)
    return aioredis.Redis.from_url(url, retry_on_timeout=False, **kw)


def make_sync_client(url: str, timeout: float = 10.0) -> Any:
    """A blocking client (readers, export): ``redis.Redis`` or ``redis.cluster.RedisCluster``."""
    import redis

    kw: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": min(2.0, timeout)}
    if is_cluster_url(url):
        from redis.cluster import RedisCluster

        return RedisCluster.from_url(client_url(url), **kw)
    return redis.Redis.from_url(url, **kw)


def spool_dir_of(cfg: CaptureConfig) -> Path:
    return Path(cfg.spool_dir) if cfg.spool_dir else Path(cfg.data_dir) / "spool"


class CaptureWriter:
    def __init__(
        self,
        cfg: CaptureConfig,
        redis_url: str,
        metrics: Metrics,
        options: FinalizeOptions,
        queue_size: int,
    ) -> None:
        self.cfg = cfg
        self.redis_url = redis_url
        self.metrics = metrics
        self.options = options
        self.queue: deque[Item] = deque()
        self.queue_size = queue_size
        self.cluster = is_cluster_url(redis_url)
        self.shards = cfg.pair_shards
        self.client: Any = None
        self.healthy = True
        self.last_error: str | None = None
        self.last_success: float | None = None
        self.spool: Spool | None = None
        self.spool_path = spool_dir_of(cfg)
        self._io = ThreadPoolExecutor(1, thread_name_prefix="capture-spool")
        self._script: Any = None
        self._task: asyncio.Task[None] | None = None
        self._probe: asyncio.Task[None] | None = None
        self._stopping = False
        self._interval = cfg.batch_interval_ms / 1000.0
        self.replay_entries = max(1000, 10 * cfg.batch_size)  # entries per replay round trip
        self._nonce = f"{os.getpid():x}.{os.urandom(4).hex()}"
        self._seq = 0
        self._keys: dict[tuple[str, str, int], str] = {}
        self._replay_started: float | None = None
        self._replay_counts = [0, 0]  # replayed, duplicates skipped
        self._spool_drops = 0
        self._last_adopt = time.monotonic()

    # ---- hot path -------------------------------------------------------------------------
    def _submit(self, stream: str, item: Any) -> bool:
        if len(self.queue) >= self.queue_size:
            self.metrics.inc("router_capture_dropped", ("queue_full",))
            return False
        self.queue.append((stream, item))
        self.metrics.inc("router_capture_queued", (stream,))
        return True

    def submit_record(self, rec: PendingRecord) -> bool:
        return self._submit("pairs", rec)

    def submit_outcome(self, row: dict[str, Any]) -> bool:
        """A validated outcome row (see :mod:`router.outcomes`)."""
        return self._submit("outcomes", row)

    # ---- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        self.client = make_client(self.redis_url, self.cfg.write_timeout_s)
        self._script = self.client.register_script(WRITE_BATCH_LUA)
        if self.cfg.spool_max_bytes > 0:
            spool = Spool(self.spool_path, self.cfg.spool_max_bytes, self.cfg.fsync)
            try:
                rec = await self._in_io(spool.open)
            except OSError as exc:  # the router still serves; capture just has no fallback
                log.error("capture: cannot open the spool in %s (%s); records that Redis cannot "
                          "take will be dropped and counted", self.spool_path, exc)  # fmt: skip
                rec = None
            else:
                self.spool = spool
            if rec is not None and rec.segments:
                self.metrics.inc("router_capture_spool_recovered", (), rec.segments)
                log.warning(
                    "capture: found %d spool segment(s), %d bytes, left by an earlier run in %s; "
                    "replaying them once Redis answers", rec.segments, rec.bytes, self.spool_path,
                )  # fmt: skip
            self._spool_gauges()
        self._task = asyncio.create_task(self._run(), name="capture-writer")

    async def stop(self, timeout: float = 10.0) -> None:
        """Flush what is queued to Redis, or to the spool when Redis is down (bounded)."""
        self._stopping = True
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
                if self.queue:
                    batch = self._next_batch(len(self.queue))
                    await self._to_spool(batch, log_reason="shutdown")
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        if self.spool is not None:
            left = self.spool.pending_bytes()
            await self._in_io(self.spool.close)
            if left:
                log.warning(
                    "capture: %d spooled bytes not yet in Redis stay in %s for the next start",
                    left, self.spool_path,
                )  # fmt: skip
        self._io.shutdown(wait=True)
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.aclose()

    async def ping(self) -> bool:
        if self.client is None:
            return False
        try:
            return bool(await asyncio.wait_for(self.client.ping(), 1.0))
        except WRITE_ERRORS:
            return False

    def status(self) -> dict[str, Any]:
        spool = self.spool
        return {
            "redis_ok": self.healthy,
            "queue": len(self.queue),
            "spool_enabled": spool is not None,
            "spool_dir": str(self.spool_path) if spool is not None else None,
            "spool_bytes": spool.bytes if spool is not None else 0,
            "spool_pending": bool(spool is not None and spool.pending),
            "spool_full": self._spool_drops > 0 and not self.healthy,
            "last_error": self.last_error,
        }

    # ---- encoding -------------------------------------------------------------------------
    def _key(self, stream: str, experiment: str, shard: int) -> str:
        k = (stream, experiment, shard)
        key = self._keys.get(k)
        if key is None:
            if stream == "outcomes":
                key = outcomes_key(experiment, cluster=self.cluster)
            else:
                key = pairs_key(experiment, cluster=self.cluster,
                                shard=shard if self.shards > 1 else None)  # fmt: skip
            self._keys[k] = key
        return key

    def _encode(self, item: Item) -> tuple[str, bytes] | None:
        stream, obj = item
        try:
            if isinstance(obj, PendingRecord):
                doc = finalize(obj, self.options)
                shard = zlib.crc32(obj.request_id.encode()) % self.shards if self.shards > 1 else 0
                return self._key(stream, obj.experiment, shard), orjson.dumps(doc)
            return self._key(stream, str(obj["experiment"]), 0), orjson.dumps(obj)
        except (TypeError, ValueError, KeyError, orjson.JSONEncodeError) as exc:
            log.error("unserialisable capture item dropped: %s", exc)
            self.metrics.inc("router_capture_dropped", ("unserialisable",))
            return None

    def _next_batch(self, n: int | None = None) -> list[Group]:
        """Pop up to ``batch_size`` items, encode them, group by stream under a new batch id."""
        q = self.queue
        n = min(len(q), self.cfg.batch_size if n is None else n)
        by_key: dict[str, list[bytes]] = {}
        for _ in range(n):
            enc = self._encode(q.popleft())
            if enc is not None:
                by_key.setdefault(enc[0], []).append(enc[1])
        self._seq += 1
        bid = f"{self._nonce}.{self._seq:x}"
        return [(key, bid, payloads) for key, payloads in by_key.items()]

    # ---- Redis ----------------------------------------------------------------------------
    def _args(self, payloads: list[bytes]) -> list[Any]:
        maxlen = self.cfg.stream_maxlen
        minid = ""
        if self.cfg.retention_s:
            minid = str(int((time.time() - self.cfg.retention_s) * 1000))
        return [self.cfg.dedupe_ttl_s, maxlen or "", minid, *payloads]

    async def _apply(self, groups: list[Group]) -> list[int]:
        """Run the batch script for every group; ``-1`` marks a batch that was already written."""
        script = self._script
        if not self.cluster:
            async with self.client.pipeline(transaction=False) as pipe:
                for key, bid, payloads in groups:
                    await script([key, batch_marker_key(key, bid)], self._args(payloads), pipe)
                return [int(r) for r in await pipe.execute()]
        # cluster: one script call at a time (each routed to its slot's master). redis-py's
        # asyncio cluster client loses connections under concurrent use (gather), and one
        # batch script carries hundreds of entries, so sequential calls are not the bottleneck.
        out: list[int] = []
        for key, bid, payloads in groups:
            out.append(int(await script([key, batch_marker_key(key, bid)], self._args(payloads))))
        return out

    async def _write(self, groups: list[Group]) -> list[int]:
        return await asyncio.wait_for(self._apply(groups), self.cfg.write_timeout_s * 2)

    def _count_written(self, groups: list[Group], results: list[int], replay: bool) -> int:
        dups = 0
        for (key, _, payloads), r in zip(groups, results, strict=True):
            if r < 0:
                dups += len(payloads)
                continue
            self.metrics.inc("router_capture_written", (stream_kind(key),), r)
            if replay:
                self.metrics.inc("router_capture_replayed", (), r)
                self._replay_counts[0] += r
        if dups:
            self.metrics.inc("router_capture_replay_duplicates", (), dups)
            self._replay_counts[1] += dups
        return dups

    def _failed(self, exc: BaseException) -> None:
        kind = type(exc).__name__
        self.metrics.inc("router_capture_errors", (kind,))
        self.last_error = f"{kind}: {exc}"
        if self.healthy:
            where = str(self.spool_path) if self.spool is not None else "nowhere (spool disabled)"
            log.error("capture: Redis write failed (%s); spooling to %s", self.last_error, where)
        self.healthy = False
        self.metrics.set("router_capture_healthy", 0.0)
        if self._probe is None or self._probe.done():
            self._probe = asyncio.create_task(self._probe_loop(), name="capture-probe")

    def _succeeded(self) -> None:
        self.last_success = time.time()
        if not self.healthy:
            log.warning("capture: Redis writes recovered")
        self.healthy = True
        self.metrics.set("router_capture_healthy", 1.0)

    async def _probe_loop(self) -> None:
        backoff = 0.05
        while not self.healthy:
            await asyncio.sleep(backoff)
            backoff = min(2.0, backoff * 2)
            if await self.ping():
                pending = self.spool.pending_bytes() if self.spool is not None else 0
                log.warning("capture: Redis answers again; replaying %d spooled bytes", pending)
                self.healthy = True  # the next write or replay confirms (or fails again)
                self.metrics.set("router_capture_healthy", 1.0)
                return

    # ---- spool ----------------------------------------------------------------------------
    async def _in_io(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)

    def _spool_gauges(self) -> None:
        if self.spool is not None:
            self.metrics.set("router_capture_spool_bytes", float(self.spool.bytes))
            self.metrics.set("router_capture_spool_segments", float(len(self.spool.segments)))

    def _drop(self, reason: str, n: int) -> None:
        if n <= 0:
            return
        self.metrics.inc("router_capture_dropped", (reason,), n)
        if reason == "spool_full":
            if self._spool_drops == 0:
                log.error("capture: spool full (%d bytes); dropping records until Redis is back",
                          self.cfg.spool_max_bytes)  # fmt: skip
            self._spool_drops += n
        else:
            log.error("capture: %d record(s) dropped (%s)", n, reason)

    async def _to_spool(self, groups: list[Group], log_reason: str = "redis") -> None:
        if self.spool is None:
            self._drop("no_spool", sum(len(p) for _, _, p in groups))
            return
        spool = self.spool

        def append_all() -> tuple[int, int]:
            stored = refused = 0
            for key, bid, payloads in groups:
                n = spool.append(key, bid, payloads)
                stored += n
                refused += len(payloads) - n
            return stored, refused

        try:
            stored, refused = await self._in_io(append_all)
        except OSError as exc:
            log.error("capture: cannot write the spool: %s", exc)
            self._drop("spool_error", sum(len(p) for _, _, p in groups))
            return
        if stored:
            self.metrics.inc("router_capture_spooled", (), stored)
            if log_reason == "shutdown":
                log.warning("capture: %d queued record(s) spooled at shutdown", stored)
        self._drop("spool_full", refused)
        self._spool_gauges()

    async def _replay_chunk(self) -> bool:
        """Replay the oldest spooled entries; False when Redis failed (nothing committed)."""
        assert self.spool is not None
        spool = self.spool
        if self._replay_started is None:
            self._replay_started = time.monotonic()
            self._replay_counts = [0, 0]
            log.warning("capture: replaying spool (%d bytes) before new records",
                        spool.pending_bytes())  # fmt: skip
        res = await self._in_io(spool.read, self.replay_entries)
        if res.corrupt_bytes:
            self.metrics.inc("router_capture_spool_corrupt_bytes", (), res.corrupt_bytes)
        if res.batches:
            groups = [(b.key, b.batch_id, b.payloads) for b in res.batches]
            try:
                results = await self._write(groups)
            except WRITE_ERRORS as exc:
                self._failed(exc)
                return False
            self._count_written(groups, results, replay=True)
            self._succeeded()
        await self._in_io(spool.commit, res.segment, res.end)
        self._spool_gauges()
        if not spool.pending:
            took = time.monotonic() - self._replay_started
            log.warning(
                "capture: spool replay done: %d record(s) replayed, %d duplicate(s) skipped, "
                "%.2f s", self._replay_counts[0], self._replay_counts[1], took,
            )  # fmt: skip
            self._replay_started = None
            if self._spool_drops:
                log.error("capture: %d record(s) were dropped while the spool was full",
                          self._spool_drops)  # fmt: skip
                self._spool_drops = 0
        return True

    # ---- background -----------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            try:
                if await self._step():
                    return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a disk or bug must never stop capture for good
                log.exception("capture: writer step failed; continuing")
                self.metrics.inc("router_capture_errors", (type(exc).__name__,))
                await asyncio.sleep(max(self._interval, 0.1))

    async def _step(self) -> bool:
        """One round of the writer loop; True when the writer is done (stopping, all flushed)."""
        self.metrics.set("router_capture_queue_depth", float(len(self.queue)))
        backlog = self.spool is not None and self.spool.pending
        if backlog and self.healthy:
            await self._replay_chunk()
            if self.queue and self.spool is not None and self.spool.pending:
                await self._to_spool(self._next_batch())  # behind the backlog, in order
            return False
        if not self.queue:
            if self._stopping:
                return True
            await self._idle()
            return False
        groups = self._next_batch()
        if not groups:
            return False
        if backlog or not self.healthy:
            await self._to_spool(groups)
            if len(self.queue) < self.cfg.batch_size and not self._stopping:
                await asyncio.sleep(self._interval)
            return False
        try:
            results = await self._write(groups)
        except WRITE_ERRORS as exc:
            self._failed(exc)
            await self._to_spool(groups)
            return False
        self._count_written(groups, results, replay=False)
        self._succeeded()
        if len(self.queue) < self.cfg.batch_size and not self._stopping:
            await asyncio.sleep(self._interval)
        return False

    async def _idle(self) -> None:
        spool = self.spool
        if spool is not None:
            if spool.fsync == "batch" and spool.dirty:
                await self._in_io(spool.sync)
            now = time.monotonic()
            if now - self._last_adopt > 30.0:  # a sibling worker that died: take over its spool
                self._last_adopt = now
                if await self._in_io(spool.adopt_orphans):
                    self.metrics.inc("router_capture_spool_recovered")
                    self._spool_gauges()
        await asyncio.sleep(self._interval)
