"""Records read from JSONL files or Redis and parsed into pages on background threads.

Kept apart from the analysis (no pydantic, no scipy) so a command can start reading as soon as
it knows its source and let its other imports happen while the first pages parse.
"""

from __future__ import annotations

import gzip
import queue
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np
import polars as pl

from router.analysis.frames import Chunk, Page, prepare_records, record_schema

CHUNK = 12 << 20
REPLAY_SLACK_S = 3600.0
NUMERIC_KINDS = ("score", "value")


@dataclass
class Source:
    """Where the data comes from: JSONL files, a Redis URL or an archive (exactly one; or an
    archive and a Redis URL: the archive for what the streams no longer hold). ``coverage`` is
    filled while an archive is read (:mod:`router.analysis.archive_read`)."""

    experiment: str
    pairs_file: str | None = None
    outcomes_file: str | None = None
    redis_url: str | None = None
    since: float | None = None
    until: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    archive: str | None = None  # a directory or s3://… written by `router archive`
    coverage: Any = None
    rollups: bool = False  # an archive: merge usable hourly rollups (router.analysis.rollups)


class InputError(Exception):
    """A data file that cannot be read to its end (a truncated or corrupt gzip), named."""


def _open(path: str) -> IO[bytes] | gzip.GzipFile:
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def iter_chunks(path: str, size: int = CHUNK) -> Iterator[bytes]:
    """A (possibly gzipped) JSONL file in chunks of whole lines of about ``size`` bytes."""
    with _open(path) as fh:
        carry = b""
        while True:
            try:
                block = fh.read(size)
            except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
                raise InputError(f"{path}: truncated or corrupt gzip ({exc})") from None
            if not block:
                if carry.strip():
                    yield carry
                return
            block = carry + block if carry else block
            cut = block.rfind(b"\n") + 1
            carry = block[cut:]
            if cut:
                yield block[:cut]


def file_chunks(path: str, size: int = CHUNK) -> Iterator[Chunk]:
    """:func:`iter_chunks` with the file line number of each chunk's first line."""
    line = 1
    for data in iter_chunks(path, size):
        yield Chunk(data, first_line=line)
        line += _newlines(data)


def _newlines(data: bytes) -> int:
    # (numpy counts a 12 MiB chunk's newlines in ~1.5 ms, bytes.count in ~4)
    return int(np.count_nonzero(np.frombuffer(data, np.uint8) == 10))


def stream_chunks(
    client: Any, key: str, since: float | None, until: float | None
) -> Iterator[Chunk]:
    """Pages of a stream as chunks of JSON lines, each line named by its stream id."""
    from router.capture.reader import iter_raw_id_pages

    for ids, page in iter_raw_id_pages(client, key, since, until):
        data = b"\n".join(page)
        if _newlines(data) != len(page) - 1:  # a payload written over several lines
            data = b"\n".join(p.replace(b"\n", b" ") for p in page)  # (JSON: whitespace)
        yield Chunk(data, names=ids, label=key)


def id_until(src: Source) -> float | None:
    """Upper bound on stream ids for the window: records replayed from a router's spool after a
    Redis outage are stored late (their id is the replay time, their ``ts`` the request's), so
    ids are read up to ``REPLAY_SLACK_S`` past ``until`` and records are then kept by ``ts``."""
    return None if src.until is None else src.until + REPLAY_SLACK_S


def record_chunks(src: Source) -> Iterator[Chunk]:
    if src.redis_url:
        from router.capture.clients import make_sync_client
        from router.capture.reader import discover_pair_keys

        client = make_sync_client(src.redis_url)
        try:
            for key in discover_pair_keys(client, src.experiment):  # one, or the shards
                yield from stream_chunks(client, key, src.since, id_until(src))
        finally:
            client.close()
    elif src.pairs_file:
        yield from file_chunks(src.pairs_file)


def _experiment_of(key: str) -> str | None:
    """The experiment of a pairs stream key (``<exp>:pairs``, ``<exp>:pairs:<i>``, and on a
    cluster ``{<exp>}:pairs``, ``{<exp>:<i>}:pairs``), or None for another key."""
    if key.startswith("{"):
        tag, _, rest = key[1:].partition("}")
        if rest != ":pairs":
            return None
        head, _, shard = tag.rpartition(":")
        return head if head and shard.isdigit() else tag
    head, sep, tail = key.rpartition(":pairs")
    if not sep or not head or (tail and not (tail[:1] == ":" and tail[1:].isdigit())):
        return None
    return head


def experiments_in_redis(url: str, limit: int = 20) -> dict[str, int]:
    """The experiments with a pairs stream in a Redis, and their records (for an experiment
    name that matches nothing)."""
    from router.capture.clients import make_sync_client

    client = make_sync_client(url)
    found: dict[str, int] = {}
    try:
        for raw in client.scan_iter(match="*:pairs*", count=1000, _type="stream"):
            key = raw.decode() if isinstance(raw, bytes) else str(raw)
            name = _experiment_of(key)
            if name is None:
                continue
            found[name] = found.get(name, 0) + int(client.xlen(key))
            if len(found) >= limit:
                break
    finally:
        client.close()
    return found


class Pages:
    """Chunks of JSON lines read and parsed into record frames on a background thread, from
    the moment it is made: the outcomes can load meanwhile. Iterate to get the
    :class:`Page` s in order; :meth:`close` stops the reader.

    At most ``ahead`` pages wait in the queue (parsed or being parsed), plus the one the
    reader holds until there is room and the one being folded: a page is tens of MB at an
    archive's hour file, and the fold keeps up with one parse thread, so more pages ready
    only hold memory (measured at 5M records: two fewer pages ready, 50-100 MB less at the
    peak, the same CPU). ``workers`` bounds the pages parsed at once."""

    def __init__(
        self,
        chunks: Iterable[Any],  # bytes | Chunk, or what ``prepare`` takes
        schema: dict[str, pl.DataType],
        workers: int = 2,
        ahead: int = 1,
        now: float | None = None,
        prepare: Callable[[Any, float], Page] | None = None,
        start: bool = True,
    ) -> None:
        self._q: queue.Queue[Future[Page] | BaseException | None] = queue.Queue(
            maxsize=max(1, ahead)
        )
        self._stop = threading.Event()
        self._chunks, self._schema, self._workers = chunks, schema, max(1, workers)
        self._prepare = prepare  # item -> Page (default: JSON lines, prepare_records)
        # run on each page after it is prepared, on its parse thread, once set (pages parsed
        # before are handed on as they are): see router.analysis.accumulate.prefold
        self.after: Callable[[Page], Page] | None = None
        self.total_bytes = 0  # the size of all the files read (archive files; 0: unknown)
        self._now = time.time() if now is None else now  # one clock for every page
        self._reader = threading.Thread(target=self._produce, name="analyze-read", daemon=True)
        if start:
            self._reader.start()

    def _put(self, item: Future[Page] | BaseException | None) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            with ThreadPoolExecutor(self._workers, thread_name_prefix="analyze-parse") as pool:
                for chunk in self._chunks:
                    job = pool.submit(self._page, chunk)
                    if not self._put(job):
                        return
        except BaseException as exc:  # handed to the consuming thread, which raises it
            self._put(exc)
            return
        self._put(None)

    def _page(self, chunk: Any) -> Page:
        if self._prepare is not None:
            page = self._prepare(chunk, self._now)
        else:
            page = prepare_records(chunk, self._schema, self._now)
        after = self.after
        return after(page) if after is not None else page

    def __iter__(self) -> Iterator[Page]:
        if self._reader.ident is None:  # (start=False)
            self._reader.start()
        while True:
            item = self._q.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item.result()

    def close(self) -> None:
        self._stop.set()
        if self._reader.ident is not None:
            self._reader.join(timeout=5)


def stitched_items(
    src: Any, upto: float | None, schema: dict[str, Any]
) -> tuple[Iterator[tuple[str, Any]], Callable[[Any, float], Page]]:
    """Records of a window that Redis has partly trimmed: the archive's files up to where
    the pairs streams begin, then the streams (``--archive`` with ``--redis``)."""
    from router.analysis.archive_read import archive_files, file_groups, redis_cutoff_ms
    from router.capture.clients import make_sync_client
    from router.capture.reader import discover_pair_keys

    client = make_sync_client(src.redis_url)
    keys = discover_pair_keys(client, src.experiment)
    cutoff = redis_cutoff_ms(client, keys)
    files, from_file = archive_files(src, schema, upto, cutoff)
    src.coverage.redis_from = None if cutoff is None else cutoff / 1000

    def items() -> Iterator[tuple[str, Any]]:
        try:
            for group in file_groups(files):  # (small files read together: one page)
                yield "file", group
            if cutoff is None:
                return
            since = cutoff / 1000 + 0.0005  # (exactly the cutoff millisecond, as _min_id reads)
            since = max(since, src.since) if src.since is not None else since
            for key in keys:
                for chunk in stream_chunks(client, key, since, upto):
                    yield "lines", chunk
        finally:
            client.close()

    def prepare(item: tuple[str, Any], now: float) -> Page:
        kind, what = item
        if kind == "file":
            return from_file(what, now)
        return prepare_records(what, schema, now)

    return items(), prepare


def read_pages(src: Source, kind: str, track_fields: bool, workers: int = 2) -> Pages:
    """Start reading ``src``'s records; the schema follows the prediction kind and reads the
    captured input fields only when drift is analysed."""
    schema = record_schema(numeric=kind in NUMERIC_KINDS, fields=track_fields,
                           text=kind == "text")  # fmt: skip
    if src.archive and src.redis_url:  # the archive for what Redis trimmed, then Redis
        items, prep = stitched_items(src, id_until(src), schema)
        return Pages(items, schema, workers, prepare=prep)
    if src.archive:
        from router.analysis.archive_read import archive_files, file_groups

        files, prepare = archive_files(src, schema, id_until(src))
        # (read once the outcomes are in: an hour file's pages held during their load, with
        # its sort, made the peak of a week's re-fold)
        pages = Pages(file_groups(files), schema, workers, prepare=prepare, start=False)
        pages.total_bytes = sum(f.size for f in files)
        return pages
    return Pages(record_chunks(src), schema, workers)
