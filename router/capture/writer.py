"""Capture writer: records and outcomes to Redis streams, in batches, off the hot path, lossless.

The hot path calls :meth:`CaptureWriter.submit_record` (or ``submit_outcome``), a bounded
``deque.append``: when the queue is full the item is dropped and counted, the request is never
slowed. A background task wakes every ``batch_interval_ms``, finalizes pending records (JSON
parsing, prediction extraction, contract diff, field redaction: see
:mod:`router.capture.records`) and writes each batch with one pipelined round trip. Each stream
entry has a single field ``r`` holding the record's JSON.

The parts it relies on: :mod:`router.capture.batches` (batch ids and the exactly-once script),
:mod:`router.capture.keys` (stream names), :mod:`router.capture.clients` (Redis clients).

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
from typing import Any

import orjson

from router.capture.batches import WRITE_BATCH_LUA, Group, Item, run_script
from router.capture.clients import is_cluster_url, make_client
from router.capture.health import describe_error, readiness
from router.capture.keys import outcomes_key, pairs_key, probe_key, stream_kind
from router.capture.records import FinalizeOptions, PendingRecord, finalize
from router.capture.spool import Spool
from router.config import CaptureConfig
from router.metrics import Metrics

log = logging.getLogger("router.capture")


PROBE_TTL_MS = 10_000
BACKOFF_MIN_S = 0.05
BACKOFF_MAX_S = 2.0
PROBE_LOG_EVERY_S = 30.0


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
        """The capture check of ``/readyz`` (:func:`router.capture.health.readiness`); never
        raises."""
        try:
            st = self.status()
            redis_ok = self.healthy and await self.ping()
            running = self._task is not None and not self._task.done()
            return readiness(st, healthy=self.healthy, redis_ok=redis_ok, running=running,
                             last_error=self.last_error)  # fmt: skip
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # pragma: no cover - defensive: a readiness check never raises
            return {"ok": False, "redis": False, "spooling": False, "recovering": False,
                    "error": f"capture check failed: {describe_error(exc)}"}  # fmt: skip

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
            log.error("unserialisable capture item dropped: %s", describe_error(exc))
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
    async def _apply(self, groups: list[Group], replay: bool = False) -> list[int]:
        """Run the batch script for every group; ``-1`` marks a batch that was already written.
        The write seam: whatever this raises sends the batch to the spool."""
        return await run_script(self.client, self._script, self.cfg, groups, self.cluster, replay)

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
        self.last_error = describe_error(exc, self.cfg.write_timeout_s * 2)
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
                self.last_error = describe_error(exc, max(1.0, self.cfg.write_timeout_s))
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
            log.error("capture: cannot write the spool: %s", describe_error(exc))
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
