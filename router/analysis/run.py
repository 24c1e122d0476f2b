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
import multiprocessing
import os
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from router.analysis.accumulate import Accumulator
from router.analysis.outcomes_index import OutcomeIndex
from router.analysis.policy import Policy
from router.analysis.report import report_from
from router.analysis.schema import Record, decode_record
from router.analysis.schema import list_decoder as _list_decoder

BATCH = 10_000
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


def iter_lines(path: str, batch: int = BATCH) -> Iterator[list[bytes]]:
    """Non-empty lines of a (possibly gzipped) JSONL file, in batches."""
    with _open(path) as fh:
        buf: list[bytes] = []
        for line in fh:
            line = line.strip()
            if line:
                buf.append(line)
                if len(buf) >= batch:
                    yield buf
                    buf = []
        if buf:
            yield buf


def decode_records(lines: list[bytes]) -> tuple[list[Record], int]:
    """Records of a batch of JSON lines and the number of malformed lines."""
    try:
        return _list_decoder.decode(b"[" + b",".join(lines) + b"]"), 0
    except Exception:
        out = []
        bad = 0
        for raw in lines:
            rec = decode_record(raw)
            if rec is None:
                bad += 1
            else:
                out.append(rec)
        return out, bad


def _outcome_rows(pages: Iterable[list[bytes]]) -> Iterator[Any]:
    for page in pages:
        for raw in page:
            try:
                yield orjson.loads(raw)
            except orjson.JSONDecodeError:
                yield None  # counted as invalid by the index


def load_outcomes(src: Source) -> OutcomeIndex:
    oi = OutcomeIndex()
    if src.redis_url:
        from router.streams import iter_entries, sync_client

        client = sync_client(src.redis_url)
        try:
            # outcomes arrive after their requests: read from the window start to now
            oi.add_all(
                _outcome_rows(
                    iter_entries(
                        client,
                        _key(src, "outcomes"),
                        src.since,
                        None,
                    )
                ),
                src.experiment,
            )
        finally:
            client.close()
    elif src.outcomes_file:
        oi.add_all(_outcome_rows(iter_lines(src.outcomes_file)), src.experiment)
    return oi


def _key(src: Source, kind: str) -> str:
    """The stream key the capture writer uses (hash-tagged on Redis Cluster)."""
    from router import capture

    fn = capture.pairs_key if kind == "pairs" else capture.outcomes_key
    if src.redis_url and "+cluster://" in src.redis_url:
        return fn(src.experiment, cluster=True)  # type: ignore[call-arg,unused-ignore]
    return fn(src.experiment)


def _record_pages(src: Source) -> Iterator[list[bytes]]:
    if src.redis_url:
        from router.streams import iter_entries, sync_client

        client = sync_client(src.redis_url)
        try:
            yield from iter_entries(client, _key(src, "pairs"), src.since, src.until)
        finally:
            client.close()
    elif src.pairs_file:
        yield from iter_lines(src.pairs_file)


def earliest_available(src: Source) -> float | None:
    if not src.redis_url:
        return None
    from router.streams import earliest_ts, sync_client

    client = sync_client(src.redis_url)
    try:
        return earliest_ts(client, _key(src, "pairs"))
    finally:
        client.close()


def _rid_shard(line: bytes, workers: int) -> int:
    """The worker of a JSON line, from a CRC of its request id (found without parsing)."""
    i = line.find(b'"request_id":')
    if i < 0:
        return 0
    j = line.find(b'"', i + 13)
    k = line.find(b'"', j + 1)
    return zlib.crc32(line[j + 1 : k]) % workers


def fold(
    acc: Accumulator,
    pages: Iterable[list[bytes]],
    shard: tuple[int, int] | None = None,
    progress: Progress | None = None,
) -> None:
    for page in pages:
        if shard is not None:
            w, n = shard
            page = [ln for ln in page if _rid_shard(ln, n) == w]
        recs, bad = decode_records(page)
        acc.invalid += bad
        acc.add(recs)
        if progress is not None:
            progress(len(page))


# ---- parallel JSONL: forked workers inherit the outcome index (no pickling of it)
_CTX: dict[str, Any] = {}


def _worker(w: int) -> Accumulator:
    src: Source = _CTX["src"]
    acc = Accumulator(
        _CTX["policy"],
        _CTX["outcomes"],
        kind=_CTX["kind"],
        since=src.since,
        until=src.until,
        experiment=src.experiment,
        track_fields=_CTX["track_fields"],
    )
    fold(acc, _record_pages(src), (w, _CTX["workers"]))
    acc.seen = set()  # deduplication is complete within the shard; do not ship it back
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
        if workers > 1 and src.pairs_file and hasattr(os, "fork"):
            _CTX.update(
                src=src,
                policy=policy,
                outcomes=oi,
                kind=kind,
                workers=workers,
                track_fields=track_fields,
            )
            try:
                with multiprocessing.get_context("fork").Pool(workers) as pool:
                    parts = pool.map(_worker, range(workers))
            finally:
                _CTX.clear()
            acc = parts[0]
            for p in parts[1:]:
                acc.merge(p)
            if progress is not None:
                progress(acc.records + acc.invalid + acc.duplicates + acc.outside_window)
            return acc
        acc = Accumulator(
            policy,
            oi,
            kind=kind,
            since=src.since,
            until=src.until,
            experiment=src.experiment,
            track_fields=track_fields,
        )
        fold(acc, _record_pages(src), None, progress)
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
    return report_from(
        acc,
        experiment=src.experiment,
        split=split,
        earliest_available=earliest_available(src),
        reference=reference,
    )


def read_json(path: str) -> Any:
    return orjson.loads(Path(path).read_bytes())
