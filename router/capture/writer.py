"""Capture writer: records and outcomes to Redis streams, in batches, off the hot path, lossless.

The hot path calls :meth:`CaptureWriter.submit_record` (or ``submit_outcome``), a bounded
``deque.append``: when the queue is full the item is dropped and counted, the request is never
slowed. A background task wakes every ``batch_interval_ms``, finalizes pending records (JSON
parsing, prediction extraction, contract diff, field redaction: see
:mod:`router.capture.records`) and writes each batch with one pipelined round trip. Each stream
entry has a single field ``r`` holding the record's JSON.

**Exactly once, whatever Redis does.** Every write goes through one Lua script per (stream,
batch). A batch id is ``<writer nonce>.<seq>``: ``seq`` grows by one per batch of this writer
process, and a writer's batches reach each stream in ``seq`` order (a failed batch and every
later one go to the spool and are replayed in order). So one *high-water mark* per (stream,
writer) is enough to recognise a batch that is already in Redis: the script reads
``<stream>:writer:<nonce>``; a ``seq`` at or below it is a duplicate (``-1``); otherwise it
adds every entry of the batch (``XADD``), trims the stream (``MAXLEN ~`` and/or ``MINID ~``) and
sets the mark to ``seq`` with ``EX dedupe_ttl_s``. A script runs atomically, so a batch is in the
stream entirely or not at all and can never be applied twice. The marks cost one small key per
writer process and stream, whatever the traffic (the earlier design kept one key per batch:
1.6 million keys a day per worker at 400 req/s). At replay the script also honours the per-batch
key of that earlier design (``<stream>:batch:<id>``), so a spool left by it replays exactly once.

**Any failure is a spool.** Whatever a write raises (redis-py's errors, including
``RedisClusterException``, which is not a ``RedisError``; socket errors; a timeout at
``write_timeout_s``; anything unexpected), the batch goes, with its batch id, to the local spool
(:mod:`router.capture.spool`), and so does every later batch until the spool is drained: order is
kept. A probe task then tests the write path of exactly the streams that failed (a ``SET`` with
a short expiry on ``<stream>:probe``, which lives in the stream's hash slot, so on a cluster it
reaches the master that owns that slot, and fails while that master is failing over) with
exponential backoff (50 ms to 2 s, reset only by a successful write), survives any error, and
logs its first failure and then every 30 s. Once the probe's write succeeds, the spool is
replayed oldest first through the same script, so a batch whose first attempt did reach Redis
(a timeout after success) or that was replayed just before a crash is skipped, not duplicated.
The spool is bounded (``spool_max_bytes``): beyond it batches are dropped and counted.

**Keys** (the one place that names them; readers call these functions):
``<experiment>:pairs`` and ``<experiment>:outcomes`` on a single Redis; with Redis Cluster
(``redis+cluster://``) ``{<experiment>}:pairs`` and ``{<experiment>}:outcomes`` so one
experiment's streams share a hash slot while experiments spread over the cluster. With
``pair_shards: N > 1`` pairs go to N streams chosen by ``crc32(request_id) % N``:
``<experiment>:pairs:<i>``, or ``{<experiment>:<i>}:pairs`` on a cluster (a different slot per
shard, so one hot experiment spreads over the masters). :mod:`router.capture.reader` merges them
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
from urllib.parse import urlsplit

import orjson
import redis.asyncio as aioredis

from router.capture.records import FinalizeOptions, PendingRecord, finalize
from router.capture.spool import Spool
from router.config import CaptureConfig, parse_redis_url
from router.metrics import Metrics

log = logging.getLogger("router.capture")

T = TypeVar("T")
Item = tuple[str, Any]  # ("pairs" | "outcomes", PendingRecord | dict)
Group = tuple[str, str, list[bytes]]  # (stream key, batch id, payloads)

# KEYS[1] stream, KEYS[2] the writer's high-water mark, KEYS[3] (replays only) the per-batch
# marker of the earlier design; ARGV: ttl_s, maxlen|'', minid|'', seq, payload...
# Returns the number of entries added, or -1 when the batch was already written.
WRITE_BATCH_LUA = """
local seq = tonumber(ARGV[4])
if seq <= tonumber(redis.call('GET', KEYS[2]) or '0') then return -1 end
if KEYS[3] and redis.call('EXISTS', KEYS[3]) == 1 then return -1 end
for i = 5, #ARGV do redis.call('XADD', KEYS[1], '*', 'r', ARGV[i]) end
if ARGV[2] ~= '' then redis.call('XTRIM', KEYS[1], 'MAXLEN', '~', ARGV[2]) end
if ARGV[3] ~= '' then redis.call('XTRIM', KEYS[1], 'MINID', '~', ARGV[3]) end
redis.call('SET', KEYS[2], ARGV[4], 'EX', ARGV[1])
return #ARGV - 4
"""
PROBE_TTL_MS = 10_000
BACKOFF_MIN_S = 0.05
BACKOFF_MAX_S = 2.0
PROBE_LOG_EVERY_S = 30.0


# ---- key naming and clients (the single source of truth) -------------------------------------
def is_cluster_url(url: str) -> bool:
    return urlsplit(url).scheme.endswith("+cluster")


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


def writer_mark_key(stream_key: str, nonce: str) -> str:
    """The exactly-once high-water mark of one writer on one stream (same hash slot)."""
    return f"{stream_key}:writer:{nonce}"


def batch_marker_key(stream_key: str, batch_id: str) -> str:
    """The per-batch marker of the earlier design (only read, at replay, for old spools)."""
    return f"{stream_key}:batch:{batch_id}"


def probe_key(stream_key: str) -> str:
    """The key the recovery probe writes to test a stream's write path (same hash slot)."""
    return f"{stream_key}:probe"


def split_batch_id(batch_id: str) -> tuple[str, int]:
    """``<nonce>.<seq hex>`` → (nonce, seq). An id of another form is its own nonce with
    ``seq`` 1, which de-duplicates it like a per-batch marker would."""
    nonce, _, seq = batch_id.rpartition(".")
    try:
        n = int(seq, 16)
    except ValueError:
        return batch_id, 1
    return (nonce, n) if nonce and n > 0 else (batch_id, 1)


def stream_kind(key: str) -> str:
    return "outcomes" if key.endswith(":outcomes") else "pairs"


def make_client(url: str, timeout: float = 2.0) -> Any:
    """An asyncio client: ``redis.asyncio.Redis``, or ``RedisCluster`` for ``+cluster`` URLs
    (every seed of ``redis+cluster://h1:p1,h2:p2,...`` is a startup node, so the client starts
    while some seeds are down).

    ``rediss://`` (TLS) and credentials in the URL (``redis://user:password@host``) are passed
    to redis-py as they are. A malformed URL raises ``ValueError`` naming the problem."""
    target = parse_redis_url(url)
    kw: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": min(1.0, timeout)}
    if target.cluster:
        from redis.asyncio.cluster import ClusterNode, RedisCluster
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # no blind client-side retries: a failed write goes to the spool and is replayed
        # through the de-duplicating script (redirections, MOVED/ASK, are still followed)
        seeds = [ClusterNode(host, port) for host, port in target.seeds[1:]]
        return RedisCluster.from_url(target.node_url(0), startup_nodes=seeds,
                                     retry=Retry(NoBackoff(), 0), **kw)  # fmt: skip
    return aioredis.Redis.from_url(url, retry_on_timeout=False, **kw)


def make_sync_client(url: str, timeout: float = 10.0) -> Any:
    """A blocking client (readers, export, controller): ``redis.Redis`` or
    ``redis.cluster.RedisCluster`` (all seeds of a cluster URL, as :func:`make_client`)."""
    import redis

    target = parse_redis_url(url)
    kw: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": min(2.0, timeout)}
    if target.cluster:
        from redis.cluster import ClusterNode, RedisCluster

        seeds = [ClusterNode(host, port) for host, port in target.seeds[1:]]
        return RedisCluster.from_url(target.node_url(0), startup_nodes=seeds, **kw)
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
        self._probe_keys: set[str] = set()  # the streams whose write failed (probe targets)
        self._backoff = BACKOFF_MIN_S  # grows per failed write or probe, reset by a success
        self._failing = False  # a write failed since the last successful one

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
        """A validated outcome row (see :mod:`router.capture.outcomes`)."""
        return self._submit("outcomes", row)

    # ---- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        self._nonce = f"{os.getpid():x}.{os.urandom(4).hex()}"  # after any fork
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
        """Flush what is queued to Redis, or to the spool when Redis is down (bounded by
        ``timeout``). Never raises: a problem is logged, and what could not be flushed stays in
        the spool for the next start (or is counted as dropped)."""
        self._stopping = True
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                await _cancel(self._task)  # an in-flight batch goes to the spool (see _step)
            except Exception:  # pragma: no cover - _run catches everything
                log.exception("capture: the writer task failed")
            if self.queue:
                await self._to_spool(self._next_batch(len(self.queue)), log_reason="shutdown")
        await _cancel(self._probe)
        if self.spool is not None:
            left = self.spool.pending_bytes()
            try:
                await self._in_io(self.spool.close)
            except Exception as exc:
                log.error("capture: closing the spool in %s failed: %s", self.spool_path, exc)
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
        """Whether Redis takes this writer's writes now (the probe's write, bounded to 1 s).
        Never raises."""
        if self.client is None:
            return False
        try:
            await asyncio.wait_for(self._probe_write(limit=16), 1.0)
        except asyncio.CancelledError:
            raise
        except Exception:
            return False
        return True

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
            "recovering": not self.healthy and self._probe is not None and not self._probe.done(),
            "last_error": self.last_error,
        }

    async def readiness(self) -> dict[str, Any]:
        """The capture check of ``/readyz``; never raises. Ready when Redis takes writes, or
        when the spool takes them (it has room) while the probe works on recovery: a Redis
        outage alone does not take a router out of rotation. Not ready when the spool is
        full or disabled while Redis is down, or when the writer or its probe has stopped."""
        try:
            st = self.status()
            redis_ok = self.healthy and await self.ping()
            running = self._task is not None and not self._task.done()
            recovering = self.healthy or bool(st["recovering"])
            spooling = bool(st["spool_enabled"]) and not st["spool_full"]
            ok = running and (redis_ok or (spooling and recovering))
            if not running:
                error: str | None = "the capture writer is not running"
            elif redis_ok:
                error = None
            elif not recovering:
                error = "Redis is down and nothing is probing it"
            elif not spooling:
                error = ("spool full: records are being dropped; " if st["spool_enabled"]
                         else "no spool: records are being dropped; ") + (
                    self.last_error or "Redis write probe failed")  # fmt: skip
            else:
                error = self.last_error or "Redis write probe failed"
            return {
                "ok": ok,
                "redis": redis_ok,
                "spooling": not redis_ok and spooling,
                "recovering": not redis_ok and recovering,
                "queue": st["queue"],
                "spool_bytes": st["spool_bytes"],
                "error": error,
            }
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # pragma: no cover - defensive: a readiness check never raises
            return {"ok": False, "redis": False, "spooling": False, "recovering": False,
                    "error": f"capture check failed: {_describe(exc)}"}  # fmt: skip

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
        except Exception as exc:  # whatever a record holds, the writer goes on
            log.error("unserialisable capture item dropped: %s", _describe(exc))
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
    def _call(self, key: str, bid: str, payloads: list[bytes], replay: bool,
              ) -> tuple[list[str], list[Any]]:  # fmt: skip
        """KEYS and ARGV of the batch script for one (stream, batch)."""
        nonce, seq = split_batch_id(bid)
        keys = [key, writer_mark_key(key, nonce)]
        if replay:  # a spool written before the high-water marks may hold such a batch
            keys.append(batch_marker_key(key, bid))
        minid = ""
        if self.cfg.retention_s:
            minid = str(int((time.time() - self.cfg.retention_s) * 1000))
        maxlen = self.cfg.stream_maxlen or ""
        return keys, [self.cfg.dedupe_ttl_s, maxlen, minid, seq, *payloads]

    async def _apply(self, groups: list[Group], replay: bool = False) -> list[int]:
        """Run the batch script for every group; ``-1`` marks a batch that was already written.
        The write seam: whatever this raises sends the batch to the spool."""
        script = self._script
        if not self.cluster:
            async with self.client.pipeline(transaction=False) as pipe:
                for key, bid, payloads in groups:
                    await script(*self._call(key, bid, payloads, replay), pipe)
                return [int(r) for r in await pipe.execute()]
        # cluster: one script call at a time (each routed to its slot's master). redis-py's
        # asyncio cluster client loses connections under concurrent use (gather), and one
        # batch script carries hundreds of entries, so sequential calls are not the bottleneck.
        out: list[int] = []
        for key, bid, payloads in groups:
            out.append(int(await script(*self._call(key, bid, payloads, replay))))
        return out

    async def _write(self, groups: list[Group], replay: bool = False) -> list[int]:
        return await asyncio.wait_for(self._apply(groups, replay), self.cfg.write_timeout_s * 2)

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

    def _failed(self, exc: BaseException, groups: list[Group]) -> None:
        """A write failed (any exception): count, remember which streams to probe, back off."""
        kind = type(exc).__name__
        self.metrics.inc("router_capture_errors", (kind,))
        self.last_error = _describe(exc, self.cfg.write_timeout_s * 2)
        self._probe_keys = {key for key, _, _ in groups}
        # a write that fails again right after a good probe does not restart the backoff
        self._backoff = min(BACKOFF_MAX_S, self._backoff * 2) if self._failing else BACKOFF_MIN_S
        self._failing = True
        if self.healthy:
            where = str(self.spool_path) if self.spool is not None else "nowhere (spool disabled)"
            log.error("capture: Redis write failed (%s); spooling to %s", self.last_error, where)
        self.healthy = False
        self.metrics.set("router_capture_healthy", 0.0)
        if self._probe is None or self._probe.done():
            self._probe = asyncio.create_task(self._probe_loop(), name="capture-probe")

    def _succeeded(self) -> None:
        self.last_success = time.time()
        if self._failing:
            log.warning("capture: Redis writes recovered")
        self._failing = False
        self._backoff = BACKOFF_MIN_S
        self._probe_keys.clear()
        self.healthy = True
        self.metrics.set("router_capture_healthy", 1.0)

    async def _probe_write(self, limit: int | None = None) -> None:
        """Test the write path: a short-lived ``SET`` in the hash slot of each stream whose
        write failed (else of each stream written so far; a ``PING`` before the first write).
        On a cluster each goes to the master that owns that slot. Raises on failure."""
        keys = sorted(self._probe_keys or set(self._keys.values()))[:limit]
        if not keys:
            await self.client.ping()
            return
        for key in keys:
            await self.client.set(probe_key(key), self._nonce, px=PROBE_TTL_MS)

    async def _probe_loop(self) -> None:
        """Until a probe write succeeds: wait (backoff), then probe. Survives any error; logs
        the first failure and then every ``PROBE_LOG_EVERY_S``."""
        failures = 0
        started = last_log = time.monotonic()
        while not self.healthy:
            try:
                await asyncio.sleep(self._backoff)
                await asyncio.wait_for(self._probe_write(), max(1.0, self.cfg.write_timeout_s))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # whatever the client raises, keep probing
                failures += 1
                self.metrics.inc("router_capture_probes", ("failed",))
                self.last_error = _describe(exc, max(1.0, self.cfg.write_timeout_s))
                self._backoff = min(BACKOFF_MAX_S, self._backoff * 2)
                now = time.monotonic()
                if failures == 1 or now - last_log >= PROBE_LOG_EVERY_S:
                    last_log = now
                    log.warning(
                        "capture: Redis write probe failed %d time(s) in %.1f s (%s); spooling, "
                        "next probe in %.2f s", failures, now - started, self.last_error,
                        self._backoff,
                    )  # fmt: skip
                continue
            self.metrics.inc("router_capture_probes", ("ok",))
            pending = self.spool.pending_bytes() if self.spool is not None else 0
            log.warning("capture: Redis takes writes again (after %d failed probe(s), %.1f s); "
                        "replaying %d spooled bytes", failures, time.monotonic() - started,
                        pending)  # fmt: skip
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
        except Exception as exc:
            log.error("capture: cannot write the spool: %s", _describe(exc))
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
                results = await self._write(groups, replay=True)
            except asyncio.CancelledError:
                raise  # still in the spool: replayed (de-duplicated) next time
            except Exception as exc:  # any failure: retry after the probe
                self._failed(exc, groups)
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
        except asyncio.CancelledError:  # stop() timed out mid-write: the outcome is unknown,
            await self._to_spool(groups, log_reason="shutdown")  # the replay de-duplicates
            raise
        except Exception as exc:  # any failure, whatever its type, sends the batch to the spool
            self._failed(exc, groups)
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


def _describe(exc: BaseException, timeout: float | None = None) -> str:
    """``Kind: message`` on one line (a timeout says how long it waited)."""
    text = " ".join(str(exc).split())
    if not text and isinstance(exc, TimeoutError) and timeout is not None:
        text = f"no answer within {timeout:g} s"
    return f"{type(exc).__name__}: {text}"[:300]


async def _cancel(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` and wait for it; whatever it raises is logged, never re-raised."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # the caller itself is being cancelled
    except Exception:
        log.exception("capture: background task %s failed", task.get_name())
