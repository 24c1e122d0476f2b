"""Fold an archive's files on several processes or machines, and merge the aggregates.

``router analyze --archive URI --executor …``:

- ``threads`` (the default, see README "Executors"): one process; files parsed on
  ``--workers`` threads and folded in order (the pipeline of JSONL and Redis sources);
- ``processes``: a local process pool of ``--workers`` processes;
- ``dask://HOST:PORT`` (or ``tcp://…``): the workers of a Dask distributed scheduler
  (``pip install 'shadow-router[dask]'``; the workers need this package and read access to the
  archive, e.g. the same S3 bucket).

The window's files are cut into contiguous runs (tasks, in time order); each task folds its
files into an :class:`~router.analysis.arms.ArmSet` (one
:class:`~router.analysis.accumulate.Accumulator` per challenger's view, see
:mod:`router.analysis.arms`) against the outcome index (sent once per worker: scattered by
Dask, an initializer argument for the pool) and sends it back; the caller merges them in task
order, view by view, so every executor gives the same report.

The views are agreed across tasks as a sequential fold would agree them: with ``--shares``
the tasks fold the challengers it names; otherwise each task folds those its own records name
(reading its files again when a challenger appears after its first file). When a task's
views are not the window's (:func:`~router.analysis.arms.agreed_arms`: a challenger first
named in a later task, whose view must hold the champion-served requests of the earlier
ones), every task is folded again with the agreed views (logged; the threads executor reads
the window again in that case too). A stream whose challengers are all named in every task,
and every two-arm stream, is folded once.

Request ids repeated *across* tasks (a record replayed from a router's spool into a later
hour) cannot be dropped once folded: they are counted in the report
(``archive.cross_task_duplicates``, 0 in the single-process executor) instead.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np

from router.analysis.accumulate import Accumulator
from router.analysis.arms import ArmSet, agreed_arms
from router.analysis.outcomes_index import OutcomeIndex
from router.analysis.policy import Policy

log = logging.getLogger(__name__)
TASKS_PER_WORKER = 4
MAX_FILES_PER_TASK = 64
CONNECT_TIMEOUT_S = 5


@dataclass(frozen=True)
class FoldJob:
    """What a task needs besides its files (sent once per worker)."""

    uri: str
    experiment: str
    policy: Policy
    outcomes: OutcomeIndex
    kind: str
    track_fields: bool
    since: float | None
    until: float | None
    upto: float | None  # last stream time read (the window's end plus the replay slack)
    schema: dict[str, Any]  # the record columns read (router.analysis.frames.record_schema)
    now: float

    def accumulator(self) -> Accumulator:
        """An empty accumulator of this job (its "now" the analysis's, so every task judges
        "in the future" alike)."""
        acc = Accumulator(self.policy, self.outcomes, kind=self.kind, since=self.since,
                          until=self.until, experiment=self.experiment,
                          track_fields=self.track_fields)  # fmt: skip
        acc.now = self.now
        return acc


class ExecutorUnavailable(RuntimeError):
    """The executor cannot be used: dask not installed, or its scheduler unreachable."""


_JOB: FoldJob | None = None  # a pool worker's job (set by its initializer)


def _init_worker(job: FoldJob) -> None:
    global _JOB
    _JOB = job


def fold_files(job: FoldJob, files: list[Any], arms: list[str] | None = None) -> ArmSet:
    """One task: fold ``files`` (in order) into a fresh :class:`ArmSet` with the views of
    ``arms`` (None: those the files name; read again when a challenger appears after the first
    file that names one); returned without its outcome index (the caller has it)."""
    from threadpoolctl import threadpool_limits

    from router.analysis.archive_read import file_groups, file_page
    from router.archive.store import ArchiveStore

    store = ArchiveStore.open(job.uri)

    make = job.accumulator
    with threadpool_limits(limits=1, user_api="blas"):  # (see run.quiet_blas)
        while True:
            aset = ArmSet(make, arms)
            for group in file_groups(files):  # (small files read together: one page)
                aset.add_page(file_page(store, group, job.schema, job.since, job.upto, job.now))
            if not aset.restart:
                break
            arms = aset.restart_arms()
    return detach(aset)


def detach(aset: ArmSet) -> ArmSet:
    """``aset`` ready to be sent back: without its outcome index and factory."""
    for acc in aset.arms.values():
        acc.outcomes = OutcomeIndex()  # (not sent back)
    aset.make = None
    aset._empty_pages = []
    return aset


def attach(aset: ArmSet, outcomes: OutcomeIndex) -> ArmSet:
    for acc in aset.arms.values():
        acc.outcomes = outcomes
    return aset


def _pool_task(files: list[Any], arms: list[str] | None) -> ArmSet:
    assert _JOB is not None, "worker not initialised"
    return fold_files(_JOB, files, arms)


def _dask_task(files: list[Any], job: FoldJob, arms: list[str] | None) -> ArmSet:
    return fold_files(job, files, arms)


def tasks_of(files: list[Any], workers: int) -> list[list[Any]]:
    """Contiguous runs of files, about ``TASKS_PER_WORKER`` per worker (at most
    ``MAX_FILES_PER_TASK`` files each), balanced by bytes."""
    if not files:
        return []
    n = max(1, min(len(files), workers * TASKS_PER_WORKER))
    n = max(n, -(-len(files) // MAX_FILES_PER_TASK))
    cum = np.cumsum([max(1, f.size) for f in files], dtype=np.float64)
    cuts = {int(np.searchsorted(cum, cum[-1] * k / n)) + 1 for k in range(1, n)}
    bounds = [0, *sorted(c for c in cuts if 0 < c < len(files)), len(files)]
    return [files[a:b] for a, b in pairwise(bounds) if b > a]


class Merger:
    """Merges task results into the first, in task order, as they arrive, while their views
    agree; after a part with other views only the challengers each part names are kept (the
    caller folds again with :meth:`agreed`)."""

    def __init__(self, outcomes: OutcomeIndex, arms: list[str] | None = None) -> None:
        self.outcomes = outcomes
        self.given = arms
        self.merged: ArmSet | None = None
        self.disagree = False  # a part's views were not the merged ones
        self.names: list[list[str]] = []  # each part's challengers (ArmSet.part_names)
        self.cross_task_duplicates = 0
        self._waiting: dict[int, ArmSet] = {}
        self._next = 0

    def add(self, i: int, part: ArmSet) -> None:
        self._waiting[i] = part
        while self._next in self._waiting:
            part = self._waiting.pop(self._next)
            self._next += 1
            self.names.append(part.part_names())
            if self.disagree:
                continue
            if self.merged is None:
                self.merged = attach(part, self.outcomes)
                self.disagree = part.restart
                continue
            if part.restart or set(part.views()) != set(self.merged.views()):
                self.disagree, self.merged = True, None  # (freed: folded again)
                continue
            ids = part.request_ids()
            self.cross_task_duplicates += int(np.count_nonzero(self.merged.holds(ids)))
            self.merged.merge(part)

    def agreed(self) -> list[str]:
        """The views the window needs (:func:`~router.analysis.arms.agreed_arms`)."""
        return agreed_arms(self.given, self.names)

    def result(self) -> ArmSet | None:
        """The merged parts, or None when they must be folded again with :meth:`agreed`."""
        agreed = self.agreed()
        if self.disagree or self.merged is None or set(self.merged.views()) != set(agreed):
            return None
        self.merged.arms = {n: self.merged.arms[n] for n in agreed}  # (the agreed order)
        self.merged.order = list(agreed)
        return self.merged


def run_tasks(job: FoldJob, tasks: list[list[Any]], executor: str, workers: int,
              arms: list[str] | None = None) -> Merger:  # fmt: skip
    merger = Merger(job.outcomes, arms)
    t0 = time.perf_counter()
    if executor == "processes":
        import multiprocessing as mp

        with ProcessPoolExecutor(max_workers=max(1, min(workers, len(tasks))),
                                 mp_context=mp.get_context("spawn"),
                                 initializer=_init_worker, initargs=(job,)) as pool:  # fmt: skip
            futures: dict[Future[ArmSet], int] = {
                pool.submit(_pool_task, t, arms): i for i, t in enumerate(tasks)
            }
            for fut in _as_completed(futures):
                merger.add(futures[fut], fut.result())
    else:
        _run_dask(job, tasks, executor, merger, arms)
    log.info("analyze: %d tasks on %s in %.2f s", len(tasks), executor, time.perf_counter() - t0)
    return merger


def _as_completed(futures: dict[Future[ArmSet], int]) -> Iterator[Future[ArmSet]]:
    from concurrent.futures import as_completed

    yield from as_completed(futures)


def dask_address(executor: str) -> str:
    return "tcp://" + executor.split("://", 1)[1] if executor.startswith("dask://") else executor


def _run_dask(job: FoldJob, tasks: list[list[Any]], executor: str, merger: Merger,
              arms: list[str] | None) -> None:  # fmt: skip
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise ExecutorUnavailable("needs dask.distributed (pip install 'shadow-router[dask]')"
                                  ) from None  # fmt: skip
    try:
        client = Client(dask_address(executor), timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError) as exc:
        raise ExecutorUnavailable(f"scheduler unreachable: {exc}") from None
    with client:
        shared = client.scatter(job, broadcast=True)
        futures = [client.submit(_dask_task, t, shared, arms, pure=False, key=f"router-fold-{i}-"
                                 f"{time.time_ns()}") for i, t in enumerate(tasks)]  # fmt: skip
        index = {f.key: i for i, f in enumerate(futures)}
        for fut in as_completed(futures):
            merger.add(index[fut.key], fut.result())
            fut.release()


def fold_archive(src: Any, policy: Policy, outcomes: OutcomeIndex, *, kind: str,
                 track_fields: bool, executor: str, workers: int,
                 arms: list[str] | None = None) -> ArmSet:  # fmt: skip
    """The challengers' views of an archive source's window, folded by ``executor``;
    ``arms``: the challengers asked for (``--shares``), else those the records name."""
    from router.analysis.archive_read import archive_files
    from router.analysis.frames import record_schema
    from router.analysis.reader import NUMERIC_KINDS, id_until

    upto = id_until(src)
    schema = record_schema(numeric=kind in NUMERIC_KINDS, fields=track_fields, text=kind == "text")
    files, _prepare = archive_files(src, schema, upto)
    job = FoldJob(src.archive, src.experiment, policy, outcomes, kind, track_fields, src.since,
                  src.until, upto, schema, time.time())  # fmt: skip
    tasks = tasks_of(files, workers)
    if not tasks and executor == "processes":
        return attach(fold_files(job, [], arms), outcomes)
    merger = run_tasks(job, tasks, executor, workers, arms)  # (a scheduler is reached even so)
    out = merger.result()
    if out is None and tasks:
        agreed = merger.agreed()
        log.info("analyze: the tasks named challengers %s: folding every task again with "
                 "their views", agreed)  # fmt: skip
        merger = run_tasks(job, tasks, executor, workers, agreed)
        out = merger.result()
        assert out is not None, "the agreed views were not agreed"
    if out is None:
        return attach(fold_files(job, [], arms), outcomes)
    src.coverage.executor = executor
    src.coverage.tasks = len(tasks)
    src.coverage.cross_task_duplicates = merger.cross_task_duplicates
    return out
