"""Stream records and outcomes from JSONL files or Redis into an analysis (the I/O shell).

Records are read a page at a time (12 MiB of a file, or a page of stream entries) and parsed by
polars into columns on background threads (:mod:`router.analysis.reader`), starting before the
outcomes load; once the outcomes are indexed for the join, the main thread folds the pages in
order into an :class:`~router.analysis.accumulate.Accumulator`, so memory does not grow with
the number of records beyond the per-unit and per-request-id state.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

from threadpoolctl import threadpool_limits

from router.analysis.accumulate import Accumulator, prefold
from router.analysis.arms import ArmSet, prefold_arms
from router.analysis.frames import Page
from router.analysis.outcomes_index import MAX_METRICS, OutcomeIndex
from router.analysis.policy import Policy
from router.analysis.reader import (
    REPLAY_SLACK_S,
    Pages,
    Source,
    file_chunks,
    iter_chunks,
    read_pages,
    stream_chunks,
)

__all__ = ["REPLAY_SLACK_S", "Pages", "Source", "accumulate", "analyze", "fold", "iter_chunks"]
log = logging.getLogger(__name__)
Progress = Callable[[int], object]


def _history(policy: Policy) -> float:
    """Seconds of outcome history before the window that CUPED's covariates need."""
    return policy.cuped.history_s if policy.cuped.enabled else 0.0


def load_outcomes(
    src: Source, max_metrics: int = MAX_METRICS, history_s: float = 0.0
) -> OutcomeIndex:
    """The outcomes of ``src``. From Redis, also the unit-joined rows that arrived in the
    ``history_s`` before the window's start: the pre-exposure history CUPED's covariates come
    from (rows before a unit's first exposure are never counted as its outcomes)."""
    oi = OutcomeIndex(max_metrics)
    if src.redis_url and src.archive:  # the archive up to where the stream begins
        from router.analysis.archive_read import (
            load_archive_outcomes,
            open_store,
            redis_cutoff_ms,
        )
        from router.capture.clients import make_sync_client
        from router.capture.reader import stream_keys

        client = make_sync_client(src.redis_url)
        try:
            key = stream_keys(client, src.experiment, outcomes=True)[0]
            cutoff = redis_cutoff_ms(client, [key])
            store = open_store(src)
            if src.since is not None and history_s > 0:  # the history (CUPED): unit rows
                end_ms = int(src.since * 1000)
                load_archive_outcomes(oi, store, src.experiment, src.since - history_s,
                                      src.coverage, before_ms=min(cutoff or end_ms, end_ms),
                                      unit_rows_only=True)  # fmt: skip
                if cutoff is not None and cutoff < end_ms:  # its part the stream still holds
                    start = max(cutoff / 1000 + 0.0005, src.since - history_s)
                    oi.add_raw(stream_chunks(client, key, start, src.since), src.experiment,
                               unit_rows_only=True)  # fmt: skip
            load_archive_outcomes(oi, store, src.experiment, src.since, src.coverage,
                                  before_ms=cutoff)  # fmt: skip
            if cutoff is not None:
                since = cutoff / 1000 + 0.0005  # (from exactly that millisecond)
                since = max(since, src.since) if src.since is not None else since
                oi.add_raw(stream_chunks(client, key, since, None), src.experiment)
        finally:
            client.close()
    elif src.redis_url:
        from router.capture.clients import make_sync_client
        from router.capture.reader import stream_keys

        client = make_sync_client(src.redis_url)
        try:
            # outcomes arrive after their requests: read from the window start to now
            key = stream_keys(client, src.experiment, outcomes=True)[0]
            if src.since is not None and history_s > 0:
                # the units' pre-exposure history (CUPED): unit-joined rows only
                history = stream_chunks(client, key, src.since - history_s, src.since)
                oi.add_raw(history, src.experiment, unit_rows_only=True)
            oi.add_raw(stream_chunks(client, key, src.since, None), src.experiment)
        finally:
            client.close()
    elif src.outcomes_file:
        oi.add_raw(file_chunks(src.outcomes_file), src.experiment)
    elif src.archive:
        from router.analysis.archive_read import load_archive_outcomes, open_store

        store = open_store(src)
        if src.since is not None and history_s > 0:  # the history (CUPED): unit rows only
            load_archive_outcomes(oi, store, src.experiment, src.since - history_s,
                                  src.coverage, before_ms=int(src.since * 1000),
                                  unit_rows_only=True)  # fmt: skip
        load_archive_outcomes(oi, store, src.experiment, src.since, src.coverage)
    return oi


def _id_span(src: Source) -> tuple[list[str], float | None, float | None]:
    """The pairs stream keys and the first and last ids (unix s) over all of them."""
    from router.capture.clients import make_sync_client
    from router.capture.reader import discover_pair_keys, earliest_available, latest_available

    assert src.redis_url is not None
    client = make_sync_client(src.redis_url)
    try:
        keys = discover_pair_keys(client, src.experiment)
        return keys, earliest_available(client, keys), latest_available(client, keys)
    finally:
        client.close()


def earliest_available(src: Source) -> float | None:
    if src.archive:
        from router.analysis.archive_read import earliest_archived

        return earliest_archived(src)
    if not src.redis_url:
        return None
    return _id_span(src)[1]


def fold(
    acc: Accumulator | ArmSet, pages: Iterable[Page], progress: Progress | None = None,
    trim_heap: bool = False,
) -> None:
    """Fold parsed pages into ``acc`` in order; ``trim_heap`` (an archive's pages): handing
    the C heap's free memory back to the system every :data:`TRIM_ROWS` records (see
    :func:`_malloc_trim`). Pages of archive files: the records to come are estimated from the
    first page's rows per byte and the size of all the files (``acc.expect_records``)."""
    trim = _malloc_trim() if trim_heap else None
    rows = 0  # folded since the last trim
    total_bytes = pages.total_bytes if isinstance(pages, Pages) else 0
    for page in pages:
        if total_bytes and page.source_bytes and page.cols.height:
            acc.expect_records(page.cols.height * total_bytes // page.source_bytes)
            total_bytes = 0
        acc.add_page(page)
        rows += page.cols.height
        if trim is not None and rows >= TRIM_ROWS:
            trim(0)
            rows = 0
        if progress is not None:
            progress(page.cols.height + page.invalid)


TRIM_ROWS = 200_000  # records folded between two trims of the C heap


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim`` (None elsewhere): numpy's temporaries of a page, tens of MB,
    are freed into glibc's arenas, which keep most of them; trimmed after each archive page
    (an hour file), a re-fold of 50M archived records peaked 90-110 MB lower (1,296-1,308 MiB
    against 1,387-1,406 in the same runs) at no measurable CPU. A trim walks the heap (a few
    ms, more over the larger heap of JSON parsing), so it waits for :data:`TRIM_ROWS` records
    and is not made for JSON lines (a JSONL analysis ran 5% faster without it)."""
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def prefold_on_parse_threads(
    pages: Pages, outcomes: OutcomeIndex, kind: str, arms: bool = True
) -> None:
    """Join the outcomes, reduce the unit rows and read the predictions of each page on its
    parse thread (:func:`router.analysis.accumulate.prefold`; ``arms``: for an
    :class:`~router.analysis.arms.ArmSet`, its part too: :func:`.arms.prefold_arms`), not on
    the thread that folds."""
    outcomes.freeze()
    pages.after = partial(prefold_arms if arms else prefold, outcomes=outcomes, kind=kind)


def quiet_blas() -> threadpool_limits:
    """One BLAS thread for the analysis: it works on vectors, and OpenBLAS's idle threads spin
    after every call (measured: about 0.4 CPU-seconds per million records on 2 cores, and 3
    before the folding code stopped calling ``np.dot``)."""
    return threadpool_limits(limits=1, user_api="blas")


def accumulate_arms(
    src: Source,
    policy: Policy,
    *,
    kind: str = "score",
    workers: int = 2,
    track_fields: bool = True,
    progress: Progress | None = None,
    pages: Pages | None = None,
    arms: list[str] | None = None,
    executor: str = "threads",
    outcomes: OutcomeIndex | None = None,
) -> ArmSet:
    """Read ``src`` into one accumulator per challenger view (:mod:`router.analysis.arms`).
    When the records name a challenger not in ``arms`` (default: the one ``challenger``),
    the source is read a second time with every challenger the first read found. An archive
    folded by other processes (``executor`` not ``threads``, :mod:`router.analysis.distribute`)
    or from hourly rollups (:mod:`router.analysis.rollups`) is folded in parts, each into an
    :class:`ArmSet`, merged view by view with the challengers agreed across the parts.
    ``outcomes``: the outcome index to join (default: the source's)."""
    gc_was = gc.isenabled()
    gc.disable()  # millions of short-lived containers; no cycles are created
    try:
        return _accumulate_arms(src, policy, kind, workers, track_fields, progress, pages, arms,
                                executor, outcomes)  # fmt: skip
    finally:
        if gc_was:
            gc.enable()


def _accumulate_arms(src: Source, policy: Policy, kind: str, workers: int, track_fields: bool,
                     progress: Progress | None, pages: Pages | None, arms: list[str] | None,
                     executor: str, outcomes: OutcomeIndex | None) -> ArmSet:  # fmt: skip
    if src.archive and not src.redis_url and src.rollups:
        from router.analysis.rollups import fold_with_rollups, outcome_snapshot

        if pages is not None:
            pages.close()
            pages = None
        # the last rollup's outcome snapshot when still current (see rollups.py), else a read
        snap = outcome_snapshot(src, policy, kind, track_fields) if outcomes is None else None
        done = None
        if snap is not None:
            done = fold_with_rollups(src, policy, snap, kind=kind, track_fields=track_fields,
                                     arms=arms)  # fmt: skip
        if done is None:  # (an hour re-folded: it needs the outcomes' request rows)
            if outcomes is None:
                outcomes = load_outcomes(src, policy.data_quality.max_metrics, _history(policy))
            done = fold_with_rollups(src, policy, outcomes, kind=kind,
                                     track_fields=track_fields, arms=arms)  # fmt: skip
        assert done is not None
        src.coverage.rollups = done[1].as_dict()
        return done[0]
    if src.archive and not src.redis_url and executor != "threads":
        if pages is not None:
            pages.close()
        from router.analysis.distribute import fold_archive

        if outcomes is None:
            outcomes = load_outcomes(src, policy.data_quality.max_metrics, _history(policy))
        return fold_archive(src, policy, outcomes, kind=kind, track_fields=track_fields,
                            executor=executor, workers=workers, arms=arms)  # fmt: skip
    if outcomes is None:
        outcomes = load_outcomes(src, policy.data_quality.max_metrics, _history(policy))
    oi = outcomes
    while True:
        if pages is None:
            pages = read_pages(src, kind, track_fields, workers)

        def make() -> Accumulator:
            return Accumulator(policy, oi, kind=kind, since=src.since, until=src.until,
                               experiment=src.experiment, track_fields=track_fields)  # fmt: skip

        aset = ArmSet(make, arms)
        if src.archive:  # (JSON lines: the parse threads are the busy ones, measured)
            prefold_on_parse_threads(pages, oi, kind)
        try:
            with quiet_blas():
                fold(aset, pages, progress, trim_heap=bool(src.archive))
        finally:
            pages.close()
        if not aset.restart:
            return aset
        log.info("records name challengers %s: reading again with one view each",
                 aset.restart_arms())  # fmt: skip
        arms, pages = aset.restart_arms(), None


def accumulate(
    src: Source,
    policy: Policy,
    *,
    kind: str = "score",
    workers: int = 2,
    track_fields: bool = True,
    progress: Progress | None = None,
    outcomes: OutcomeIndex | None = None,
    pages: Pages | None = None,
    executor: str = "threads",
) -> Accumulator:
    """Read ``src`` into an accumulator (``workers`` pages parsed at once). ``pages``: records
    already being read (:func:`~router.analysis.reader.read_pages`, same kind and fields);
    they are closed here. ``executor`` (an archive only): ``threads``, ``processes`` or
    ``dask://HOST:PORT`` (:mod:`router.analysis.distribute`)."""
    if src.archive and not src.redis_url and (executor != "threads" or src.rollups):
        # folded in parts: the first challenger's view (every record of a two-arm stream)
        return accumulate_arms(src, policy, kind=kind, workers=workers, track_fields=track_fields,
                               progress=progress, pages=pages, executor=executor,
                               outcomes=outcomes).primary  # fmt: skip
    gc_was = gc.isenabled()
    gc.disable()  # millions of short-lived containers; no cycles are created
    try:
        if pages is None:
            pages = read_pages(src, kind, track_fields, workers)  # parses while outcomes load
        with quiet_blas():
            return _accumulate(src, policy, kind, track_fields, progress, outcomes, pages)
    finally:
        if gc_was:
            gc.enable()


def _accumulate(
    src: Source,
    policy: Policy,
    kind: str,
    track_fields: bool,
    progress: Progress | None,
    outcomes: OutcomeIndex | None,
    pages: Pages,
) -> Accumulator:
    try:
        history = policy.cuped.history_s if policy.cuped.enabled else 0.0
        oi = outcomes if outcomes is not None else load_outcomes(
            src, policy.data_quality.max_metrics, history
        )
        acc = Accumulator(
            policy,
            oi,
            kind=kind,
            since=src.since,
            until=src.until,
            experiment=src.experiment,
            track_fields=track_fields,
        )
        if src.archive:  # (JSON lines: the parse threads are the busy ones, measured)
            prefold_on_parse_threads(pages, oi, kind, arms=False)
        fold(acc, pages, progress, trim_heap=bool(src.archive))
        return acc
    finally:
        pages.close()


def analyze(
    src: Source,
    policy: Policy,
    *,
    kind: str = "score",
    split: float | None = None,
    shares: dict[str, float] | None = None,
    workers: int = 2,
    reference: dict[str, Any] | None = None,
    reference_src: Source | None = None,
    progress: Progress | None = None,
    executor: str = "threads",
) -> dict[str, Any]:
    """The report of a source (see :func:`router.analysis.report.report_from`)."""
    track = reference is not None or reference_src is not None
    acc = accumulate_arms(src, policy, kind=kind, workers=workers, track_fields=track,
                          progress=progress, executor=executor,
                          arms=list(shares) if shares else None)  # fmt: skip
    if reference_src is not None:
        from router.analysis.sections.drift import reference_stats

        ref_acc = accumulate(
            reference_src, policy, kind=kind, workers=workers, outcomes=OutcomeIndex()
        )
        reference = reference_stats(ref_acc)
    from router.analysis.report import report_from

    with quiet_blas():
        report = report_from(
            acc,
            experiment=src.experiment,
            split=split,
            earliest_available=earliest_available(src),
            reference=reference,
            shares=shares,
        )
    add_archive_section(report, src, acc.primary)
    return report


def add_archive_section(report: dict[str, Any], src: Source, acc: Accumulator) -> None:
    """The report's ``archive`` key when the records came from an archive."""
    if src.archive:
        from router.analysis.archive_read import archive_section

        report["archive"] = archive_section(src, acc)
