"""Local append-only spool for capture batches that Redis could not take (yet).

When Redis is unreachable or slow, the capture writer appends its batches here and replays them,
in order, when Redis is back. Everything in this module is synchronous file I/O; the writer calls
it from one dedicated thread so the event loop (and the hot path) never waits on the disk.

Layout of ``spool_dir``::

    writer-<owner>.lock             one per live writer, held with flock(LOCK_EX)
    <ns:020d>-<owner>.seg           segment files, named by creation time (ns) and owner
    <ns:020d>-<owner>.seg.off       replay progress of that segment (8-byte little-endian offset)

``owner`` is ``<pid>.<slot>``: the pid, and the first slot whose lock is free (several writers in
one process, e.g. tests running routers in-process, each get their own).

A segment starts with the 8-byte magic ``b"SRSPOOL1"`` followed by frames::

    u32 body_length | u32 crc32(body) | body           (little-endian)
    body = u16 len(key) | u8 len(batch_id) | key | batch_id | payload

``key`` is the Redis stream key, ``batch_id`` the writer batch the entry belongs to (replays are
de-duplicated per batch, see :mod:`router.capture.batches`), ``payload`` the record's JSON.

Rules:

- One writer per owner: the lock file is held for the life of the :class:`Spool`. A lock file
  whose flock can be taken belongs to a dead writer; its segments are *adopted* (renamed to this
  owner, keeping their creation time so they replay first). That is how a router restarted after a
  crash (SIGKILL, OOM) finds the previous spool.
- Appends go to the newest segment; a new segment starts once it exceeds ``segment_bytes``.
- The spool never grows past ``max_bytes`` (bytes on disk); entries that do not fit are refused
  and the caller counts them as dropped.
- Replay reads frames from the oldest segment, the caller writes them to Redis and then
  :meth:`Spool.commit`\\ s; a fully replayed segment is deleted. A crash between the Redis write
  and the commit replays those entries again: idempotency is the caller's job.
- A torn last frame (a crash mid-write) or a CRC mismatch ends that segment: the bytes after it
  are counted as corrupt and skipped.
- ``fsync``: ``always`` fsyncs after every append (and the directory on segment creation);
  ``batch`` fsyncs at most once a second and on rotation/close; ``never`` leaves it to the OS.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import struct
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

log = logging.getLogger("router.spool")

MAGIC = b"SRSPOOL1"
_FRAME = struct.Struct("<II")
_BODY = struct.Struct("<HB")
_SEG_RE = re.compile(r"^(\d{20})-(\d+\.\d+)\.seg$")
_LOCK_RE = re.compile(r"^writer-(\d+\.\d+)\.lock$")
READ_CHUNK = 4 * 1024 * 1024
FsyncPolicy = Literal["always", "batch", "never"]


def encode_frame(key: str, batch_id: str, payload: bytes) -> bytes:
    k, b = key.encode(), batch_id.encode()
    body = _BODY.pack(len(k), len(b)) + k + b + payload
    return _FRAME.pack(len(body), zlib.crc32(body)) + body


@dataclass(slots=True)
class SpoolBatch:
    """Consecutive spooled entries of one writer batch for one stream."""

    key: str
    batch_id: str
    payloads: list[bytes] = field(default_factory=list)


@dataclass(slots=True)
class ReadResult:
    batches: list[SpoolBatch]
    segment: Path | None
    end: int  # commit this offset once the batches are in Redis
    entries: int = 0
    corrupt_bytes: int = 0


@dataclass(slots=True)
class _Segment:
    path: Path
    size: int
    replayed: int = len(MAGIC)
    end: int | None = None  # offset where valid data ends (after a torn/corrupt frame)

    @property
    def off_path(self) -> Path:
        return self.path.with_name(self.path.name + ".off")


@dataclass(frozen=True, slots=True)
class Recovery:
    segments: int
    bytes: int


class Spool:
    def __init__(
        self,
        directory: str | os.PathLike[str],
        max_bytes: int,
        fsync: FsyncPolicy = "batch",
        segment_bytes: int | None = None,
    ) -> None:
        self.dir = Path(directory)
        self.max_bytes = max_bytes
        self.fsync = fsync
        self.segment_bytes = segment_bytes or max(64 * 1024, min(64 << 20, max_bytes // 8))
        self.owner = ""  # "<pid>.<slot>", set by open()
        self.segments: list[_Segment] = []
        self._active: _Segment | None = None
        self._fd: int | None = None
        self._lock_fd: int | None = None
        self._last_sync = 0.0
        self._dirty = False
        self.bytes = 0  # bytes on disk (all segments)

    # ---- lifecycle --------------------------------------------------------------------------
    def open(self) -> Recovery:
        """Take this process's lock, load own segments and adopt those of dead writers."""
        self.dir.mkdir(parents=True, exist_ok=True)
        pid = os.getpid()
        for slot in range(1024):
            fd = os.open(self.dir / f"writer-{pid}.{slot}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self._lock_fd, self.owner = fd, f"{pid}.{slot}"
            break
        else:
            raise OSError(f"no free spool writer slot in {self.dir}")
        before = {s.path.name for s in self.segments}
        self.adopt_orphans()
        self._rescan()
        new = [s for s in self.segments if s.path.name not in before]
        return Recovery(len(new), sum(s.size - s.replayed for s in new))

    def close(self) -> None:
        """Flush and release the lock; leaves unreplayed segments for the next start."""
        self._close_active(sync=self.fsync != "never")
        if not self.segments and self._lock_fd is not None:
            with contextlib.suppress(OSError):
                (self.dir / f"writer-{self.owner}.lock").unlink()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def adopt_orphans(self) -> int:
        """Rename segments of writers that are gone to this owner. Returns segments adopted."""
        adopted = 0
        live: set[str] = {self.owner}
        for path in self.dir.iterdir():
            m = _LOCK_RE.match(path.name)
            if not m or m.group(1) == self.owner:
                continue
            owner = m.group(1)
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    live.add(owner)  # a live writer (or another adopter) holds it
                    continue
                adopted += self._rename_segments_of(owner)
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            finally:
                os.close(fd)
        # segments whose owner left no lock file at all (should not happen, but never strand data)
        owners = {m.group(2) for p in self.dir.iterdir() if (m := _SEG_RE.match(p.name))}
        for owner in owners - live:
            if not (self.dir / f"writer-{owner}.lock").exists():
                adopted += self._rename_segments_of(owner)
        if adopted:
            self._rescan()
        return adopted

    def _rename_segments_of(self, owner: str) -> int:
        n = 0
        for path in sorted(self.dir.glob(f"*-{owner}.seg")):
            m = _SEG_RE.match(path.name)
            if not m:
                continue
            target = self.dir / f"{m.group(1)}-{self.owner}.seg"
            try:
                off = path.with_name(path.name + ".off")
                if off.exists():
                    os.rename(off, target.with_name(target.name + ".off"))
                os.rename(path, target)
                n += 1
            except FileNotFoundError:
                continue  # another adopter was quicker
        if n:
            log.warning("spool: adopted %d segment(s) left by writer %s", n, owner)
        return n

    def _rescan(self) -> None:
        known = {s.path: s for s in self.segments}
        segs: list[_Segment] = []
        for path in sorted(self.dir.glob(f"*-{self.owner}.seg")):
            if not _SEG_RE.match(path.name):
                continue
            seg = known.get(path)
            if seg is None:
                seg = _Segment(path, path.stat().st_size)
                with contextlib.suppress(OSError, struct.error):
                    raw = seg.off_path.read_bytes()
                    seg.replayed = max(len(MAGIC), struct.unpack("<Q", raw[:8])[0])
            segs.append(seg)
        self.segments = segs
        self.bytes = sum(s.size for s in segs)

    # ---- append -----------------------------------------------------------------------------
    @property
    def dirty(self) -> bool:
        """Appends not yet fsynced."""
        return self._dirty

    @property
    def pending(self) -> bool:
        """True while some spooled entry has not been replayed."""
        return any(s.replayed < (s.end if s.end is not None else s.size) for s in self.segments)

    def append(self, key: str, batch_id: str, payloads: Iterable[bytes]) -> int:
        """Append entries of one batch; returns how many fit (the rest must be counted dropped)."""
        frames: list[bytes] = []
        size = 0
        for p in payloads:
            f = encode_frame(key, batch_id, p)
            if self.bytes + size + len(f) + len(MAGIC) > self.max_bytes:
                break
            frames.append(f)
            size += len(f)
        if not frames:
            return 0
        seg = self._writable(size)
        data = b"".join(frames)
        assert self._fd is not None
        os.write(self._fd, data)
        seg.size += len(data)
        self.bytes += len(data)
        self._dirty = True
        now = time.monotonic()
        if self.fsync == "always" or (self.fsync == "batch" and now - self._last_sync >= 1.0):
            os.fsync(self._fd)
            self._last_sync = now
            self._dirty = False
        return len(frames)

    def _writable(self, size: int) -> _Segment:
        seg = self._active
        if seg is not None and seg.size + size <= self.segment_bytes:
            return seg
        self._close_active(sync=self.fsync != "never")
        path = self.dir / f"{time.time_ns():020d}-{self.owner}.seg"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        os.write(self._fd, MAGIC)
        if self.fsync == "always":
            dfd = os.open(self.dir, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        seg = _Segment(path, len(MAGIC))
        self.segments.append(seg)
        self.bytes += len(MAGIC)
        self._active = seg
        return seg

    def _close_active(self, sync: bool) -> None:
        if self._fd is not None:
            if sync and self._dirty:
                os.fsync(self._fd)
            os.close(self._fd)
        self._fd = None
        self._active = None
        self._dirty = False

    def sync(self) -> None:
        """fsync pending appends (the writer calls this when idle under the batch policy)."""
        if self._fd is not None and self._dirty and self.fsync != "never":
            os.fsync(self._fd)
            self._last_sync = time.monotonic()
            self._dirty = False

    # ---- replay -----------------------------------------------------------------------------
    def read(self, max_entries: int) -> ReadResult:
        """Up to ``max_entries`` unreplayed entries from the oldest segment, grouped by batch."""
        while self.segments:
            seg = self.segments[0]
            limit = seg.end if seg.end is not None else seg.size
            if seg.replayed >= limit and seg is not self._active:
                self._delete(seg)
                continue
            return self._read_segment(seg, max_entries)
        return ReadResult([], None, 0)

    def _read_segment(self, seg: _Segment, max_entries: int) -> ReadResult:
        """Whole batches only: a batch is never split over two reads, because its replay is
        all-or-nothing (one batch id, one de-duplication key)."""
        limit = seg.end if seg.end is not None else seg.size
        with open(seg.path, "rb") as f:
            if seg.replayed == len(MAGIC) and f.read(len(MAGIC)) != MAGIC:
                return self._corrupt(seg, len(MAGIC), "bad magic")
        chunk = READ_CHUNK
        while True:
            buf = self._read_at(seg.path, seg.replayed, min(chunk, max(0, limit - seg.replayed)))
            at_end = seg.replayed + len(buf) >= limit  # the buffer holds the rest of the segment
            batches: list[SpoolBatch] = []
            pos = n = group_start = 0
            current: SpoolBatch | None = None
            full = False  # stopped at a batch boundary because max_entries was reached
            while pos + _FRAME.size <= len(buf):
                length, crc = _FRAME.unpack_from(buf, pos)
                start, stop = pos + _FRAME.size, pos + _FRAME.size + length
                if stop > len(buf):
                    if at_end:  # torn: the file ends inside this frame
                        res = self._corrupt(seg, seg.replayed + pos, "torn last frame")
                        return self._result(res, batches, seg.replayed + pos, n)
                    break
                body = memoryview(buf)[start:stop]
                if zlib.crc32(body) != crc or length < _BODY.size:
                    res = self._corrupt(seg, seg.replayed + pos, "CRC mismatch")
                    return self._result(res, batches, seg.replayed + pos, n)
                klen, blen = _BODY.unpack_from(body, 0)
                k0 = _BODY.size
                key = bytes(body[k0 : k0 + klen]).decode()
                bid = bytes(body[k0 + klen : k0 + klen + blen]).decode()
                if current is None or current.key != key or current.batch_id != bid:
                    if n >= max_entries:
                        full = True
                        break
                    current = SpoolBatch(key, bid)
                    batches.append(current)
                    group_start = pos
                current.payloads.append(bytes(body[k0 + klen + blen :]))
                pos = stop
                n += 1
            if full or (at_end and pos == len(buf)):
                return ReadResult(batches, seg.path, seg.replayed + pos, n)
            if at_end:  # fewer bytes left than a frame header: a write torn by a crash
                res = self._corrupt(seg, seg.replayed + pos, "torn last frame")
                return self._result(res, batches, seg.replayed + pos, n)
            # the buffer ended inside the segment: the last batch may go on after it
            if len(batches) > 1:
                last = batches.pop()
                return ReadResult(batches, seg.path, seg.replayed + group_start,
                                  n - len(last.payloads))  # fmt: skip
            chunk *= 2  # one batch larger than the buffer: read more

    @staticmethod
    def _read_at(path: Path, offset: int, size: int) -> bytes:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(size)

    @staticmethod
    def _result(res: ReadResult, batches: list[SpoolBatch], end: int, n: int) -> ReadResult:
        res.batches, res.end, res.entries = batches, end, n
        return res

    def _corrupt(self, seg: _Segment, offset: int, why: str) -> ReadResult:
        bad = seg.size - offset
        log.error("spool: %s in %s at byte %d; skipping %d bytes", why, seg.path.name, offset, bad)
        seg.end = offset
        if seg is self._active:
            self._close_active(sync=False)
        return ReadResult([], seg.path, offset, 0, corrupt_bytes=bad)

    def commit(self, segment: Path | None, end: int) -> None:
        """Entries up to ``end`` of ``segment`` are in Redis: record it, delete a finished one."""
        seg = next((s for s in self.segments if s.path == segment), None)
        if seg is None:
            return
        seg.replayed = max(seg.replayed, end)
        limit = seg.end if seg.end is not None else seg.size
        if seg.replayed >= limit:
            if seg is self._active:
                self._close_active(sync=False)
            self._delete(seg)
            return
        with open(seg.off_path, "wb") as f:
            f.write(struct.pack("<Q", seg.replayed))

    def _delete(self, seg: _Segment) -> None:
        for p in (seg.path, seg.off_path):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        self.segments.remove(seg)
        self.bytes -= seg.size

    def pending_bytes(self) -> int:
        return sum(max(0, (s.end if s.end is not None else s.size) - s.replayed)
                   for s in self.segments)  # fmt: skip
