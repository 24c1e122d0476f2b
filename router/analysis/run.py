"""Stream records and outcomes from JSONL files or Redis into an analysis (the I/O shell).

Outcomes are read first (they are indexed for the join), then records are read a page at a
time (8 MiB of a file, or a page of stream entries), parsed by polars into columns and folded
into an :class:`~router.analysis.accumulate.Accumulator`, so memory does not grow with the
number of records beyond the per-unit and per-request-id state. Reading and parsing run in a
background thread (polars parses without holding the GIL) while the main thread folds the
previous page; ``workers`` pages are parsed at once.
"""

from __future__ import annotations

import gc
import gzip
import logging
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson
import polars as pl
from threadpoolctl import threadpool_limits

from router.analysis.accumulate import Accumulator
from router.analysis.frames import Page, prepare_records, record_schema
from router.analysis.outcomes_index import OutcomeIndex
from router.analysis.policy import Policy

CHUNK = 12 << 20
REPLAY_SLACK_S = 3600.0
log = logging.getLogger(__name__)
Progress = Callable[[int], object]


@dataclass
class Source:
    """Where the data comes from: JSONL files or a Redis URL (exactly one)."""

    experiment: str
    pairs_file: str | None = None
    outcomes_file: str | None = None
    redis_url: str | None = None
    since: float | None = None
    until: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _open(path: str) -> IO[bytes] | gzip.GzipFile:
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def iter_chunks(path: str, size: int = CHUNK) -> Iterator[bytes]:
    """A (possibly gzipped) JSONL file in chunks of whole lines of about ``size`` bytes."""
    with _open(path) as fh:
        carry = b""
        while True:
            block = fh.read(size)
            if not block:
                if carry.strip():
                    yield carry
                return
            block = carry + block if carry else block
            cut = block.rfind(b"\n") + 1
            carry = block[cut:]
            if cut:
                yield block[:cut]


def _joined(pages: Iterable[list[bytes]]) -> Iterator[bytes]:
    for page in pages:
        yield b"\n".join(page)


def load_outcomes(src: Source) -> OutcomeIndex:
    oi = OutcomeIndex()
    if src.redis_url:
        from router.capture import make_sync_client
        from router.capture_reader import iter_raw_pages, stream_keys

        client = make_sync_client(src.redis_url)
        try:
            # outcomes arrive after their requests: read from the window start to now
            key = stream_keys(client, src.experiment, outcomes=True)[0]
            pages = iter_raw_pages(client, key, src.since, None)
            oi.add_raw(_joined(pages), src.experiment)
        finally:
            client.close()
    elif src.outcomes_file:
        oi.add_raw(iter_chunks(src.outcomes_file), src.experiment)
    return oi


def _id_until(src: Source) -> float | None:
    """Upper bound on stream ids for the window: records replayed from a router's spool after a
    Redis outage are stored late (their id is the replay time, their ``ts`` the request's), so
    ids are read up to ``REPLAY_SLACK_S`` past ``until`` and records are then kept by ``ts``."""
    return None if src.until is None else src.until + REPLAY_SLACK_S


def _record_chunks(src: Source) -> Iterator[bytes]:
    if src.redis_url:
        from router.capture import make_sync_client
        from router.capture_reader import discover_pair_keys, iter_raw_pages

        client = make_sync_client(src.redis_url)
        try:
            for key in discover_pair_keys(client, src.experiment):  # one, or the shards
                yield from _joined(iter_raw_pages(client, key, src.since, _id_until(src)))
        finally:
            client.close()
    elif src.pairs_file:
        yield from iter_chunks(src.pairs_file)


def _id_span(src: Source) -> tuple[list[str], float | None, float | None]:
    """The pairs stream keys and the first and last ids (unix s) over all of them."""
    from router.capture import make_sync_client
    from router.capture_reader import discover_pair_keys, earliest_available, latest_available

    assert src.redis_url is not None
    client = make_sync_client(src.redis_url)
    try:
        keys = discover_pair_keys(client, src.experiment)
        return keys, earliest_available(client, keys), latest_available(client, keys)
    finally:
        client.close()


def earliest_available(src: Source) -> float | None:
    if not src.redis_url:
        return None
    return _id_span(src)[1]


class Pages:
    """Chunks of JSON lines read and parsed into record frames on a background thread
    (``workers`` chunks parsed at once, ``ahead`` frames kept ready), from the moment it is
    made: the outcomes can load meanwhile. Iterate to get the :class:`Page` s in order;
    :meth:`close` stops the reader."""

    def __init__(
        self,
        chunks: Iterable[bytes],
        schema: dict[str, pl.DataType],
        workers: int = 2,
        ahead: int = 2,
    ) -> None:
        self._q: queue.Queue[Future[Page] | BaseException | None] = queue.Queue(
            maxsize=max(ahead, workers + 1)
        )
        self._stop = threading.Event()
        self._chunks, self._schema, self._workers = chunks, schema, max(1, workers)
        self._reader = threading.Thread(target=self._produce, name="analyze-read", daemon=True)
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
                    if not self._put(pool.submit(prepare_records, chunk, self._schema)):
                        return
        except BaseException as exc:  # handed to the consuming thread, which raises it
            self._put(exc)
            return
        self._put(None)

    def __iter__(self) -> Iterator[Page]:
        while True:
            item = self._q.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item.result()

    def close(self) -> None:
        self._stop.set()
        self._reader.join(timeout=5)


def fold(acc: Accumulator, pages: Iterable[Page], progress: Progress | None = None) -> None:
    """Fold parsed pages into ``acc`` in order."""
    for page in pages:
        acc.add_page(page)
        if progress is not None:
            progress(page.cols.height + page.invalid)


def quiet_blas() -> threadpool_limits:
    """One BLAS thread for the analysis: it works on vectors, and OpenBLAS's idle threads spin
    after every call (measured: about 0.4 CPU-seconds per million records on 2 cores, and 3
    before the folding code stopped calling ``np.dot``)."""
    return threadpool_limits(limits=1, user_api="blas")


def accumulate(
    src: Source,
    policy: Policy,
    *,
    kind: str = "score",
    workers: int = 2,
    track_fields: bool = True,
    progress: Progress | None = None,
    outcomes: OutcomeIndex | None = None,
) -> Accumulator:
    """Read ``src`` into an accumulator (``workers`` pages parsed at once)."""
    gc_was = gc.isenabled()
    gc.disable()  # millions of short-lived containers; no cycles are created
    try:
        with quiet_blas():
            return _accumulate(src, policy, kind, workers, track_fields, progress, outcomes)
    finally:
        if gc_was:
            gc.enable()


def _accumulate(
    src: Source,
    policy: Policy,
    kind: str,
    workers: int,
    track_fields: bool,
    progress: Progress | None,
    outcomes: OutcomeIndex | None,
) -> Accumulator:
    schema = record_schema(numeric=kind in ("score", "value"), fields=track_fields)
    pages = Pages(_record_chunks(src), schema, workers)  # parses while the outcomes load
    try:
        oi = outcomes if outcomes is not None else load_outcomes(src)
        acc = Accumulator(
            policy,
            oi,
            kind=kind,
            since=src.since,
            until=src.until,
            experiment=src.experiment,
            track_fields=track_fields,
        )
        fold(acc, pages, progress)
        return acc
    finally:
        pages.close()


def analyze(
    src: Source,
    policy: Policy,
    *,
    kind: str = "score",
    split: float | None = None,
    workers: int = 2,
    reference: dict[str, Any] | None = None,
    reference_src: Source | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """The report of a source (see :func:`router.analysis.report.report_from`)."""
    track = reference is not None or reference_src is not None
    acc = accumulate(src, policy, kind=kind, workers=workers, track_fields=track, progress=progress)
    if reference_src is not None:
        from router.analysis.report import reference_stats

        ref_acc = accumulate(
            reference_src, policy, kind=kind, workers=workers, outcomes=OutcomeIndex()
        )
        reference = reference_stats(ref_acc)
    from router.analysis.report import report_from

    with quiet_blas():
        return report_from(
            acc,
            experiment=src.experiment,
            split=split,
            earliest_available=earliest_available(src),
            reference=reference,
        )


def read_json(path: str) -> Any:
    return orjson.loads(Path(path).read_bytes())
