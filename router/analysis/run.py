"""Stream records and outcomes from JSONL files or Redis into an analysis (the I/O shell).

Outcomes are read first (they are indexed for the join), then records are decoded and folded
into an :class:`~router.analysis.accumulate.Accumulator` page by page, so memory does not grow
with the number of records beyond the per-unit and per-request-id state. JSONL input can be
split across worker processes: each takes the records whose request id hashes to it (so
deduplication stays exact), and the accumulators are merged.
"""

from __future__ import annotations

import gc
import gzip
import itertools
import logging
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson

from router.analysis.accumulate import Accumulator
from router.analysis.outcomes_index import OutcomeIndex
from router.analysis.policy import Policy
from router.analysis.schema import (
    DecodeError,
    Record,
    ValidationError,
    decode_record,
    record_decoder,
)

BATCH = 10_000
REPLAY_SLACK_S = 3600.0
READ_CHUNK = 4 << 20
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


def _batches(lines: Iterable[bytes], batch: int) -> Iterator[list[bytes]]:
    buf: list[bytes] = []
    for line in lines:
        line = line.strip()
        if line:
            buf.append(line)
            if len(buf) >= batch:
                yield buf
                buf = []
    if buf:
        yield buf


def iter_lines(path: str, batch: int = BATCH) -> Iterator[list[bytes]]:
    """Non-empty lines of a (possibly gzipped) JSONL file, in batches."""
    with _open(path) as fh:
        yield from _batches(fh, batch)


def decode_records(lines: list[bytes]) -> tuple[list[Record], int]:
    """Records of a batch of JSON lines and the number of malformed lines (one decode per line:
    measured faster than joining the batch into one JSON array)."""
    dec = record_decoder.decode
    try:
        return [dec(raw) for raw in lines], 0
    except (DecodeError, ValidationError):
        out = []
        bad = 0
        for raw in lines:
            rec = decode_record(raw)
            if rec is None:
                bad += 1
            else:
                out.append(rec)
        return out, bad


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
            oi.add_raw(pages, src.experiment)
        finally:
            client.close()
    elif src.outcomes_file:
        oi.add_raw(iter_lines(src.outcomes_file), src.experiment)
    return oi


def _id_until(src: Source) -> float | None:
    """Upper bound on stream ids for the window: records replayed from a router's spool after a
    Redis outage are stored late (their id is the replay time, their ``ts`` the request's), so
    ids are read up to ``REPLAY_SLACK_S`` past ``until`` and records are then kept by ``ts``."""
    return None if src.until is None else src.until + REPLAY_SLACK_S


def _record_pages(src: Source) -> Iterator[list[bytes]]:
    if src.redis_url:
        from router.capture import make_sync_client
        from router.capture_reader import discover_pair_keys, iter_raw_pages

        client = make_sync_client(src.redis_url)
        try:
            for key in discover_pair_keys(client, src.experiment):  # one, or the shards
                yield from iter_raw_pages(client, key, src.since, _id_until(src))
        finally:
            client.close()
    elif src.pairs_file:
        yield from iter_lines(src.pairs_file)


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


def iter_line_range(path: str, start: int, end: int, batch: int = BATCH) -> Iterator[list[bytes]]:
    """Lines of ``path`` that *start* in the byte range ``[start, end)``, in batches."""
    with open(path, "rb") as fh:
        if start > 0:
            fh.seek(start - 1)
            fh.readline()  # finish the line that straddles the boundary (it belongs before)
        offset = fh.tell()  # where the next line starts

        def lines() -> Iterator[bytes]:
            nonlocal offset
            carry = b""
            while True:
                chunk = fh.read(READ_CHUNK)
                if not chunk:
                    if carry and offset < end:
                        yield carry
                    return
                parts = (carry + chunk).split(b"\n")
                carry = parts.pop()
                for line in parts:
                    if offset >= end:
                        return
                    offset += len(line) + 1
                    yield line

        yield from _batches(lines(), batch)


def _rid_hashes(seen: set[int]) -> np.ndarray:
    """Sorted fingerprints of the request ids a worker saw (their hashes, equal across forked
    workers, which share the parent's hash seed)."""
    out = np.fromiter(seen, dtype=np.int64, count=len(seen))
    out.sort()
    return out


def fold(acc: Accumulator, pages: Iterable[list[bytes]], progress: Progress | None = None) -> None:
    for page in pages:
        recs, bad = decode_records(page)
        acc.invalid += bad
        acc.add(recs)
        if progress is not None:
            progress(len(page))


# ---- parallel JSONL: forked workers inherit the outcome index (no pickling of it)
_CTX: dict[str, Any] = {}


def _worker(w: int) -> tuple[Accumulator, np.ndarray]:
    src: Source = _CTX["src"]
    lo, hi = _CTX["ranges"][w]
    acc = Accumulator(
        _CTX["policy"],
        _CTX["outcomes"],
        kind=_CTX["kind"],
        since=src.since,
        until=src.until,
        experiment=src.experiment,
        track_fields=_CTX["track_fields"],
    )
    if src.pairs_file is not None:
        fold(acc, iter_line_range(src.pairs_file, int(lo), int(hi)))
    else:
        from router.capture import make_sync_client
        from router.capture_reader import iter_raw_pages

        assert src.redis_url is not None
        client = make_sync_client(src.redis_url)  # a new connection: never share across fork
        last = w == len(_CTX["ranges"]) - 1
        try:
            for key in _CTX["keys"]:
                fold(acc, iter_raw_pages(client, key, lo, hi, until_exclusive=not last))
        finally:
            client.close()
    hashes = _rid_hashes(acc.seen)
    acc.seen = set()  # shipped back as fingerprints only
    acc.outcomes = OutcomeIndex()  # the parent has it; do not pickle it back
    return acc, hashes


def _ranges(src: Source, workers: int) -> list[tuple[float, float]] | None:
    """Byte ranges of a file, or time ranges of a stream, one per worker."""
    if src.pairs_file is not None:
        if src.pairs_file.endswith(".gz"):
            return None
        size = os.path.getsize(src.pairs_file)
        return [(size * w // workers, size * (w + 1) // workers) for w in range(workers)]
    keys, first, last = _id_span(src)
    _CTX["keys"] = keys
    if first is None or last is None:
        return None
    lo = max(first, src.since) if src.since is not None else first
    id_until = _id_until(src)
    hi = min(last, id_until) if id_until is not None else last
    if hi - lo < 0.01 * workers:
        return None
    cuts = [round(lo + (hi - lo) * w / workers, 3) for w in range(workers + 1)]
    cuts[-1] = hi
    return list(itertools.pairwise(cuts))


def _parallel(
    src: Source, policy: Policy, oi: OutcomeIndex, kind: str, workers: int, track_fields: bool
) -> Accumulator | None:
    """Ranges of the source folded by forked workers and merged; None when the source cannot
    be split or a request id appears in two ranges (the caller then reads serially, so
    deduplication stays exact)."""
    ranges = _ranges(src, workers)
    if ranges is None:
        _CTX.clear()
        return None
    _CTX.update(
        src=src, policy=policy, outcomes=oi, kind=kind, ranges=ranges, track_fields=track_fields
    )
    try:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            pending = pool.map_async(_worker, range(workers))
            import router.analysis.report  # noqa: F401 - warm scipy while the workers fold

            parts = pending.get()
    finally:
        _CTX.clear()
    for i in range(len(parts)):
        for j in range(i + 1, len(parts)):
            if np.intersect1d(parts[i][1], parts[j][1], assume_unique=True).size:
                log.warning("request ids repeat across ranges; reading serially")
                return None
    acc = parts[0][0]
    acc.outcomes = oi
    for p, _h in parts[1:]:
        acc.merge(p)
    return acc


def accumulate(
    src: Source,
    policy: Policy,
    *,
    kind: str = "score",
    workers: int = 1,
    track_fields: bool = True,
    progress: Progress | None = None,
    outcomes: OutcomeIndex | None = None,
) -> Accumulator:
    """Read ``src`` into an accumulator (parallel over ``workers`` processes for files)."""
    gc_was = gc.isenabled()
    gc.disable()  # millions of short-lived containers; no cycles are created
    try:
        oi = outcomes if outcomes is not None else load_outcomes(src)
        if workers > 1 and hasattr(os, "fork"):
            merged = _parallel(src, policy, oi, kind, workers, track_fields)
            if merged is not None:
                if progress is not None:
                    progress(merged.records + merged.invalid + merged.duplicates)
                return merged
        acc = Accumulator(
            policy,
            oi,
            kind=kind,
            since=src.since,
            until=src.until,
            experiment=src.experiment,
            track_fields=track_fields,
        )
        fold(acc, _record_pages(src), progress)
        return acc
    finally:
        if gc_was:
            gc.enable()


def analyze(
    src: Source,
    policy: Policy,
    *,
    kind: str = "score",
    split: float | None = None,
    workers: int = 1,
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

    return report_from(
        acc,
        experiment=src.experiment,
        split=split,
        earliest_available=earliest_available(src),
        reference=reference,
    )


def read_json(path: str) -> Any:
    return orjson.loads(Path(path).read_bytes())
