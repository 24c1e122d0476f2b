"""The archiver: capture streams in, Parquet partitions out, through a consumer group.

One :class:`Archiver` follows an experiment's pairs streams (every shard, Redis Cluster
included) and its outcomes stream as member ``consumer`` of the group ``group`` (created at
the start of each stream when missing, so a first run archives what the stream still holds).
Per stream it

1. reads its own pending entries first (what it had read, but not acknowledged, before a
   restart under the same name), then entries idle over ``claim_idle_s`` in other members of
   the group (``XAUTOCLAIM``; once a whole pass found none, the next pass starts after
   ``claim_idle_s / 4``, 30 s at most), then new ones (``XREADGROUP >``, its reply left as
   hiredis parses it: no tuple and dict per entry);
2. holds them in memory until ``max_buffer_records`` are buffered or the oldest has waited
   ``flush_interval_s`` (bounded: it stops reading a stream whose buffer is full), each page
   converted to Arrow columns on the *converter thread* as soon as it is read;
3. writes them with :class:`~router.archive.writer.PartitionWriter` (durably, atomically, under
   names derived from their ids, leaving out entries already archived), and only then
   acknowledges them (``XACK``, the chunks in one pipeline). The write and the acknowledgement
   run on a *writer thread*, while this thread reads the next buffer (*write-behind*):
   one batch at a time, so memory holds at most ``max_buffer_records`` per stream plus the
   batch being written; a batch whose write failed goes back into its stream's buffer and is
   written again.

A SIGKILL at any point therefore neither loses an entry (unacknowledged entries are delivered
again) nor duplicates one (the rewrite leaves out what a file already holds). Several archivers
may share a group: Redis hands each entry to one of them.

Failures (Redis unreachable, the store unwritable) are counted in
``router_archive_errors_total{stage}``, logged, and retried with a backoff of up to 30 s; the
entries stay unacknowledged meanwhile, so nothing is lost.
"""

from __future__ import annotations

import gc
import logging
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from router.archive.convert import entries_table
from router.archive.layout import KINDS, ROLLUPS, Hour, experiment_dir
from router.archive.store import ArchiveStore, StoreError
from router.archive.writer import PartitionWriter, WriteOptions, WriteResult
from router.capture.keys import outcomes_key
from router.capture.reader import discover_pair_keys, is_cluster_client
from router.config import ArchiveConfig
from router.metrics import Metrics

log = logging.getLogger(__name__)
MAX_BACKOFF_S = 30.0
LAG_INTERVAL_S = 5.0
RETENTION_INTERVAL_S = 3600.0
DISCOVER_INTERVAL_S = 60.0
ACK_CHUNK = 10_000
CLAIM_INTERVAL_S = 30.0  # longest wait between passes over the group's idle entries
LAG_SCAN_CAP = 1000  # Redis 6.2 has no group lag: undelivered entries counted up to this


def _s(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


@dataclass
class _Stream:
    key: str
    kind: str
    ids: list[str] = field(default_factory=list)
    payloads: list[bytes] = field(default_factory=list)
    pages: list[Future[pa.Table]] = field(default_factory=list)  # (the buffer, converted)
    since: float | None = None  # when the oldest buffered entry was read
    recheck: bool = False  # the buffer holds entries delivered before (pending or claimed)
    own_pending_done: bool = False
    pending_cursor: str = "0"
    claim_cursor: str = "0-0"
    next_claim: float = 0.0  # when to look for other members' idle entries again
    group_ready: bool = False
    last_archived: str | None = None


@dataclass
class _Batch:
    """A stream's buffer being written (by the writer thread)."""

    st: _Stream
    ids: list[str]
    payloads: list[bytes]
    pages: list[Future[pa.Table]]
    recheck: bool
    since: float | None


@dataclass
class Totals:
    records: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    files: int = 0
    duplicates: int = 0
    errors: int = 0


def _payload(fields: Any) -> bytes:
    """The record of an entry (field ``r``); an entry that is not a capture entry is archived
    as its fields' text (kept in column raw, never dropped)."""
    if isinstance(fields, list):  # (an unparsed reply: field, value, field, value, ...)
        fields = dict(zip(fields[::2], fields[1::2], strict=True))
    payload = fields.get(b"r", fields.get("r")) if fields else None
    if payload is None:
        return repr(fields).encode()
    return payload.encode() if isinstance(payload, str) else bytes(payload)


_frozen = False


def _freeze_heap() -> None:
    """Move what the process holds at the start (modules, classes, configuration) out of the
    garbage collector's sight, once per process: the archiver allocates millions of short-lived
    containers (reply lists, segment dicts), and every full collection would walk the whole
    heap again (a third of the Redis read's CPU without this)."""
    global _frozen
    if not _frozen:
        gc.collect()
        gc.freeze()
        _frozen = True


def _identity(response: Any, **_options: Any) -> Any:
    return response


def _raw_client(client: Any) -> Any:
    """A second handle on ``client``'s connection pool whose XREADGROUP replies are left as
    the protocol parser (hiredis) gives them: redis-py would build a tuple and a dict per
    entry (a tenth of the archiver's CPU). None for a cluster client (which keeps the parsed
    replies; :meth:`Archiver._read` takes both)."""
    import redis

    if is_cluster_client(client) or not isinstance(client, redis.Redis):
        return None
    raw = redis.Redis(connection_pool=client.connection_pool)
    raw.set_response_callback("XREADGROUP", _identity)
    return raw


def default_consumer() -> str:
    return socket.gethostname() or "archiver"


class Archiver:
    def __init__(
        self,
        client: Any,
        store: ArchiveStore,
        experiment: str,
        cfg: ArchiveConfig,
        *,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client, self.store, self.experiment, self.cfg = client, store, experiment, cfg
        self.group = cfg.group
        self.consumer = cfg.consumer or default_consumer()
        self.metrics = metrics or Metrics()
        self.clock = clock
        self.writer = PartitionWriter(
            store, experiment,
            WriteOptions(cfg.compression, cfg.compression_level, cfg.row_group_size),
        )  # fmt: skip
        self.totals = Totals()
        self._raw = _raw_client(client)
        self._converter = ThreadPoolExecutor(1, thread_name_prefix="archive-convert")
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="archive-write")
        self._writing: tuple[_Batch, Future[WriteResult]] | None = None
        self._full = False  # a buffer had no room in the last round (written back after a failure)
        self.streams: dict[str, _Stream] = {}
        self.stop_event = threading.Event()
        self._next_lag = 0.0
        self._next_retention = 0.0
        self._next_discover = 0.0
        self._backoff = 0.0
        for kind in KINDS:
            for name in ("router_archive_records", "router_archive_files",
                         "router_archive_duplicates", "router_archive_raw"):  # fmt: skip
                self.metrics.inc(name, (kind,), 0.0)
        for stage in ("read", "write", "lag", "retention", "trimmed"):
            self.metrics.inc("router_archive_errors", (stage,), 0.0)

    # ------------------------------------------------------------------ streams
    def discover(self) -> None:
        """The experiment's pairs streams (shards appear as a router is reconfigured) and its
        outcomes stream."""
        keys = [(k, "pairs") for k in discover_pair_keys(self.client, self.experiment)]
        cluster = is_cluster_client(self.client)
        keys.append((outcomes_key(self.experiment, cluster=cluster), "outcomes"))
        for key, kind in keys:
            if key not in self.streams:
                self.streams[key] = _Stream(key, kind)

    def _ensure_group(self, st: _Stream) -> None:
        from redis.exceptions import ResponseError

        if st.group_ready:
            return
        try:
            self.client.xgroup_create(st.key, self.group, id="0", mkstream=True)
            log.info("archive: created consumer group %s on %s", self.group, st.key)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        st.group_ready = True

    def _xreadgroup(self, st: _Stream, start: str, count: int,
                    block_ms: int | None = None) -> list[Any]:  # fmt: skip
        """The entries (``[id, fields]``) of one XREADGROUP page, unparsed where the client
        allows it (:func:`_raw_client`)."""
        client = self._raw if self._raw is not None else self.client
        resp = client.xreadgroup(self.group, self.consumer, {st.key: start}, count=count,
                                 block=block_ms)  # fmt: skip
        if not resp:
            return []
        if isinstance(resp, dict):  # (RESP3)
            return [m for ms in resp.values() for m in ms]
        return [m for _k, ms in resp for m in ms]

    def _read(self, st: _Stream, block_ms: int | None) -> int:
        """Read one page into the stream's buffer (its conversion queued on the converter
        thread); the number of entries read."""
        self._ensure_group(st)
        room = self.cfg.max_buffer_records - len(st.ids)
        if room <= 0:
            self._full = True
            return 0
        count = min(self.cfg.read_count, room)
        msgs: list[Any]
        if not st.own_pending_done:  # (pending history: the entries after the cursor)
            msgs = self._xreadgroup(st, st.pending_cursor, count)
            if msgs:
                st.pending_cursor = _s(msgs[-1][0])
            if len(msgs) < count:
                st.own_pending_done = True
                st.pending_cursor = "0"
            msgs = self._drop_trimmed(st, msgs, [])
            again = True
        else:
            msgs, now = [], self.clock()
            if now >= st.next_claim:
                resp = self.client.xautoclaim(
                    st.key, self.group, self.consumer, int(self.cfg.claim_idle_s * 1000),
                    start_id=st.claim_cursor, count=count,
                )  # fmt: skip
                st.claim_cursor = _s(resp[0])
                # (Redis 7 drops the ids of trimmed entries from the group itself and lists
                # them; 6.2 returns them without their id: they are now this consumer's own
                # pending entries, which the next own-pending read names and acknowledges)
                claimed = list(resp[1])
                if any(i is None for i, _f in claimed):
                    st.own_pending_done = False
                    claimed = [m for m in claimed if m[0] is not None]
                msgs = self._drop_trimmed(st, claimed,
                                          list(resp[2]) if len(resp) > 2 else [])  # fmt: skip
                if not msgs and st.claim_cursor == "0-0":  # (a whole pass found nothing)
                    st.next_claim = now + min(CLAIM_INTERVAL_S, self.cfg.claim_idle_s / 4)
            again = bool(msgs)
            if not msgs:
                msgs = self._xreadgroup(st, ">", count, block_ms)
        if not msgs:
            return 0
        if st.since is None:
            st.since = self.clock()
        st.recheck = st.recheck or again
        # (new entries, ">", were never delivered before: only a re-read can repeat what is
        # buffered or being written)
        held = self._held(st) if again else None
        ids: list[str] = []
        payloads: list[bytes] = []
        for raw_id, fields in msgs:
            sid = raw_id.decode() if type(raw_id) is bytes else str(raw_id)
            if held is not None:
                if sid in held:  # (own pending entries read again after a takeover)
                    continue
                held.add(sid)
            if type(fields) is list and len(fields) == 2 and fields[0] == b"r":
                payload = fields[1]  # (a capture entry, unparsed)
            else:
                payload = _payload(fields)
            ids.append(sid)
            payloads.append(payload)
        if ids:
            st.ids += ids
            st.payloads += payloads
            st.pages.append(self._converter.submit(entries_table, st.kind, st.key, ids,
                                                   payloads))  # fmt: skip
        return len(msgs)

    def _held(self, st: _Stream) -> set[str]:
        """The ids of the stream's entries read and not yet acknowledged."""
        held = set(st.ids)
        if self._writing is not None and self._writing[0].st is st:
            held.update(self._writing[0].ids)
        return held

    def _drop_trimmed(self, st: _Stream, msgs: list[Any], deleted: list[Any]) -> list[Any]:
        """Pending entries the stream no longer holds (trimmed by ``MAXLEN``/``MINID`` before
        they were archived: the archive lagged too far) are counted, logged and acknowledged."""
        gone = [_s(i) for i, f in msgs if not f]  # (an entry always has a field)
        if gone:
            self.client.xack(st.key, self.group, *gone)
        lost = len(gone) + len(deleted)
        if lost:
            log.error("archive: %d entries of %s were trimmed from the stream before they were "
                      "archived (raise capture.stream_maxlen or run more archivers)", lost,
                      st.key)  # fmt: skip
            self.metrics.inc("router_archive_errors", ("trimmed",), float(lost))
        return [m for m in msgs if m[1]] if gone else msgs

    def _due(self, st: _Stream, now: float) -> bool:
        if not st.ids:
            return False
        return (len(st.ids) >= self.cfg.max_buffer_records
                or now - (st.since or now) >= self.cfg.flush_interval_s)  # fmt: skip

    def flush(self, st: _Stream) -> None:
        """Write the stream's buffer to the archive, then acknowledge it (and wait)."""
        self.start_flush(st)
        self.finish_write(wait=True)

    def start_flush(self, st: _Stream) -> None:
        """Hand the stream's buffer to the writer thread, which writes it once its pages are
        converted and then acknowledges it, while this thread reads on (and the converter
        converts on: Parquet encoding runs without the GIL). One batch is written at a time:
        this waits for the previous one (and raises its error)."""
        if not st.ids:
            return
        self.finish_write(wait=True)
        batch = _Batch(st, st.ids, st.payloads, st.pages, st.recheck, st.since)
        st.ids, st.payloads, st.pages, st.since, st.recheck = [], [], [], None, False
        self._writing = (batch, self._writer.submit(self._write_batch, batch))

    def _write_batch(self, b: _Batch) -> WriteResult:
        """(On the writer thread: waits for the batch's pages to be converted.)"""
        tables = [page.result() for page in b.pages]
        table = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
        res = self.writer.write_table(b.st.kind, b.st.key, table, recheck=b.recheck)
        pipe = self.client.pipeline(transaction=False)  # (one round trip)
        for i in range(0, len(b.ids), ACK_CHUNK):
            pipe.xack(b.st.key, self.group, *b.ids[i : i + ACK_CHUNK])
        pipe.execute()
        return res

    def finish_write(self, *, wait: bool) -> None:
        """Account for the batch being written once it is done (``wait``: wait for it). A
        batch that failed goes back into its stream's buffer, ahead of what was read since,
        to be written again (its partitions listed afresh: some hours may be written), and
        its error is raised."""
        if self._writing is None:
            return
        b, done = self._writing
        if not wait and not done.done():
            return
        self._writing = None
        try:
            res = done.result()
        except BaseException:
            st = b.st
            st.ids, st.payloads, st.pages = (
                b.ids + st.ids,
                b.payloads + st.payloads,
                b.pages + st.pages,
            )
            st.recheck, st.since = True, b.since
            raise
        st, m, k = b.st, self.metrics, (b.st.kind,)
        m.inc("router_archive_records", k, float(res.records))
        m.inc("router_archive_files", k, float(res.files))
        m.inc("router_archive_bytes", k, float(res.bytes))
        m.inc("router_archive_duplicates", k, float(res.skipped))
        if res.raw:
            m.inc("router_archive_raw", k, float(res.raw))
        self.totals.records[st.kind] += res.records
        self.totals.files += res.files
        self.totals.duplicates += res.skipped
        if res.skipped:
            log.info("archive: %d entries of %s were already archived (a rewrite after a "
                     "restart or takeover): skipped", res.skipped, st.key)  # fmt: skip
        st.last_archived = b.ids[-1]

    def flush_all(self) -> None:
        for st in self.streams.values():
            self.start_flush(st)
        self.finish_write(wait=True)

    @property
    def buffered(self) -> int:
        """Entries read and not yet acknowledged (in buffers, or being written)."""
        writing = len(self._writing[0].ids) if self._writing is not None else 0
        return writing + sum(len(st.ids) for st in self.streams.values())

    # ------------------------------------------------------------------ housekeeping
    def update_lag(self) -> None:
        """``router_archive_lag_entries`` and ``_seconds`` per stream (``XINFO GROUPS``)."""
        now = self.clock()
        for st in self.streams.values():
            entries, oldest_ms = 0, None
            for g in self.client.xinfo_groups(st.key):
                if _s(g.get("name", g.get(b"name", ""))) != self.group:
                    continue
                pending = int(g.get("pending") or 0)
                last = _s(g.get("last-delivered-id", "0-0"))
                lag = g.get("lag")  # (Redis 7; counted here on 6.2, up to a bound)
                if lag is None:
                    after = self.client.xrange(st.key, min="(" + last, max="+",
                                               count=LAG_SCAN_CAP)  # fmt: skip
                    lag = len(after) if len(after) < LAG_SCAN_CAP else self.client.xlen(st.key)
                entries = pending + int(lag or 0)
                if pending:
                    summary = self.client.xpending(st.key, self.group)
                    low = summary.get("min") if isinstance(summary, dict) else summary[1]
                    oldest_ms = int(_s(low).partition("-")[0]) if low else None
                elif lag:
                    first = self.client.xrange(st.key, min="(" + last, max="+", count=1)
                    oldest_ms = int(_s(first[0][0]).partition("-")[0]) if first else None
            self.metrics.set("router_archive_lag_entries", float(entries), (st.key,))
            age = max(0.0, now - oldest_ms / 1000.0) if oldest_ms is not None else 0.0
            self.metrics.set("router_archive_lag_seconds", age, (st.key,))
        self.metrics.set("router_archive_buffered", float(self.buffered))

    def apply_retention(self) -> int:
        """Delete hour partitions that ended over ``retention_days`` ago; how many."""
        if self.cfg.retention_days is None:
            return 0
        cutoff = self.clock() - self.cfg.retention_days * 86400.0
        return delete_before(self.store, self.experiment, cutoff, self.metrics)

    # ------------------------------------------------------------------ the loop
    def read_round(self) -> int:
        """One read over the streams (waiting, shared over them, when none has anything
        new); the entries read."""
        now = self.clock()
        if now >= self._next_discover:
            self.discover()
            self._next_discover = now + DISCOVER_INTERVAL_S
        got, self._full = 0, False
        for st in self.streams.values():
            got += self._read(st, None)
        if not got and not self._full:
            wait = max(1, self.cfg.block_ms // max(1, len(self.streams)))
            for st in self.streams.values():
                if self.stop_event.is_set():
                    break
                got += self._read(st, wait)
        self.metrics.set("router_archive_buffered", float(self.buffered))
        return got

    def flush_due(self) -> None:
        """Account for a finished write (raising its error), then start writing what is
        due."""
        self.finish_write(wait=False)
        now = self.clock()
        for st in self.streams.values():
            if self._due(st, now):
                self.start_flush(st)

    def step(self) -> int:
        """One round: read, write what is due; the entries read."""
        got = self.read_round()
        self.flush_due()
        return got

    def _guarded(self, stage: str, fn: Callable[[], Any]) -> tuple[bool, Any]:
        """``(True, fn())``; on a Redis or storage failure: counted, logged, a backoff wait,
        ``(False, None)``."""
        from redis.exceptions import RedisError

        try:
            result = fn()
            self._backoff = 0.0
            return True, result
        except (RedisError, StoreError, OSError) as exc:
            self.metrics.inc("router_archive_errors", (stage,))
            self.totals.errors += 1
            self._backoff = min(MAX_BACKOFF_S, max(0.2, self._backoff * 2))
            log.error("archive: %s failed (%s: %s); retrying in %.1f s", stage,
                      type(exc).__name__, exc, self._backoff)  # fmt: skip
            self.stop_event.wait(self._backoff)
            return False, None

    def run(self, *, until_idle: bool = False) -> Totals:
        """Archive until :attr:`stop_event` is set (SIGTERM), then write what is buffered.
        ``until_idle``: stop once a round reads nothing and everything is written (tests,
        backfills)."""
        _freeze_heap()
        while not self.stop_event.is_set():
            now = self.clock()
            if now >= self._next_retention and self._guarded("retention", self.apply_retention)[0]:
                self._next_retention = now + RETENTION_INTERVAL_S
            ok, got = self._guarded("read", self.read_round)
            if not ok or not self._guarded("write", self.flush_due)[0]:
                continue
            if self.clock() >= self._next_lag:
                self._guarded("lag", self.update_lag)
                self._next_lag = self.clock() + LAG_INTERVAL_S
            idle = until_idle and got == 0 and not self._full  # (not: a buffer was full)
            if idle and self._guarded("write", self.flush_all)[0] and not self.buffered:
                break
        # stopping: write what was read (else it stays pending, for the next run)
        if self.buffered and not self._guarded("write", self.flush_all)[0]:
            log.error("archive: %d entries left unacknowledged; the next run archives them",
                      self.buffered)  # fmt: skip
        return self.totals


def delete_before(store: ArchiveStore, experiment: str, cutoff: float,
                  metrics: Metrics | None = None) -> int:  # fmt: skip
    """Delete the experiment's hour partitions (pairs, outcomes, and their rollups) that
    ended at or before ``cutoff`` (unix s), and date directories left empty; the number of
    hours deleted."""
    deleted = 0
    for kind in (*KINDS, ROLLUPS):
        base = experiment_dir(kind, experiment)
        for day in store.list_dir(base):
            if not day.is_dir or not day.name.startswith("date="):
                continue
            hours = [h for h in store.list_dir(f"{base}/{day.name}") if h.is_dir]
            gone = 0
            for h in hours:
                hour = Hour.parse(f"{day.name}/{h.name}")
                if hour is not None and hour.end <= cutoff:
                    store.delete_dir(f"{base}/{day.name}/{h.name}")
                    gone += 1
            if hours and gone == len(hours):
                store.delete_dir(f"{base}/{day.name}")
            if gone:
                log.info("archive: retention deleted %d hour partitions of %s/%s", gone, base,
                         day.name)  # fmt: skip
                if metrics is not None:
                    metrics.inc("router_archive_partitions_deleted", (kind,), float(gone))
            deleted += gone
    return deleted
