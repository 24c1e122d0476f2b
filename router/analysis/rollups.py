"""Hourly rollups of an archive: each complete hour's folded aggregate, stored beside its
partition and merged instead of re-folded (issue 14, item 2).

A rollup is the :class:`~router.analysis.arms.ArmSet` of one hour partition's records (one
:class:`~router.analysis.accumulate.Accumulator` per challenger's view; the state the Dask
executor already pickles and merges) *without* its request-id sets, folded against the
outcomes archived when it was built, written once the hour is older than ``lateness_s``
(:func:`build_rollups`; ``router rollup``) as four files in
``<uri>/rollups/experiment=<e>/date=…/hour=…/``:

- ``rollup-<fingerprint>.pkl`` (written last): the hour's pairs files (name and size), the
  metric names of its outcome index, what the checks below read (records' ``ts`` span, metric
  specs), and the fingerprints of the hour's *late* records (those whose ``ts`` lies in
  another hour: a record replayed from a router's spool) with their ``ts`` hours;
- ``acc-<fingerprint>.pkl``: the views, read only to be merged (one hour at a time);
- ``ids-<fingerprint>.npy``: every request-id fingerprint of the hour, sorted (int64; read
  only when a late record of another hour points at this one, or an outcome arrived since);
- ``outcomes-<fingerprint>.json``: the outcome files (name, size) holding a row that joins
  the hour's requests, and the outcome manifest (every outcome file read, under
  ``rollups/experiment=<e>/manifests/<fingerprint>/``) it was checked against.

A rollup is tagged with :data:`AGGREGATE_VERSION` and a fingerprint of what it was folded
with (aggregate version, a digest of the analysis code, policy, prediction kind, captured
fields, experiment); rollups of another version are never read, only rebuilt. Each
``router rollup`` also checks the existing rollups against the outcome files archived since
their manifest: a rollup none of whose requests those rows join is re-stamped with the new
manifest, one that they join is rebuilt.

``router analyze --archive URI --rollups`` uses an hour's rollup only when all of these hold,
and re-folds the hour from raw Parquet otherwise (counted per reason in the report's
``archive.rollups``):

- ``missing``: a rollup with this fingerprint (aggregate version, analysis code, policy,
  kind, fields) exists, and it is readable (``unreadable``: truncated, corrupt, a class a
  rollup may not hold, its id file or outcome stamp missing; ``version``: written with
  another :data:`AGGREGATE_VERSION`);
- ``files``: the hour's pairs files are still those it was built from;
- ``window``: the hour lies inside the window (stored from ``since`` to the replay slack after
  ``until``; every record's ``ts`` within ``[since, until]``);
- ``outcomes``: the outcome rows that join to the hour's requests *now* are those it joined:
  every outcome file it joined is still read whole (not deleted, not cut by ``since``), and
  no row of an outcome file archived after its manifest (a late outcome) names one of its
  request ids (binary search in the hour's id file);
- ``metrics``: the metric specs the analysis infers from its outcomes equal the rollup's
  (a new metric, a metric no longer binary); metric ids are remapped by name;
- ``rejected``: no record of the hour was judged "in the future" at build time;
- ``replayed``: a request id of the hour is also in another part (below);
- ``arms`` (A/B/n): the rollup holds a view for each challenger the window's analysis needs
  (:func:`~router.analysis.arms.agreed_arms`): a rollup holds the views of the challengers its
  own hour names, so an hour before a challenger was added (whose champion-served requests
  belong to that challenger's view too) is re-folded with every view.

Parts (rollups, and runs of re-folded hours) are merged in hour order, which gives the
sequential fold's aggregates, provided no request id is in two parts: a duplicate kept in two
parts could no longer be dropped. Partitions are by arrival, and a replayed record keeps its
``ts``, so of two copies of a record in two hours at least one is late (its ``ts`` is not in
its partition's hour): the other copy is either in the hour of its ``ts`` or late too. Every
late record's fingerprint is therefore checked against the id file of its ``ts`` hour and
against the late records of every other part; a hit re-folds the hours between the two
copies from raw as one run, where the later copy is dropped as the raw re-fold drops it. The
report therefore equals the raw re-fold (tests/archive/test_rollups.py), with one exception
stated in ``archive.rollups.unchecked``: a request id *reused with other content* in two
hours, both records on time (a conflict, not a replay), is not detected across rollups (the
raw re-fold counts the second as a conflict; from rollups both are counted).

Rollups are Python pickles, read with a restricted unpickler that resolves only the
analysis' own classes, numpy arrays, polars frames and a few builtins (:func:`loads`): a
rollup naming anything else is ``unreadable``. That stops a planted rollup from running code
through pickle's usual gadgets; it is not a sandbox for hostile archives, whose writers can
still forge aggregates (and so reports): use ``--rollups`` on archives you trust.
"""

from __future__ import annotations

import functools
import hashlib
import io
import itertools
import logging
import pickle
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import polars as pl

from router.analysis.accumulate import Accumulator, infer_metric_specs
from router.analysis.arms import ArmSet, agreed_arms
from router.analysis.frames import Page
from router.analysis.outcomes_index import OutcomeIndex, _Requests
from router.analysis.policy import Policy
from router.analysis.sketches import IdSet, LazyIdSet
from router.archive.layout import ROLLUPS, Hour, PartName, experiment_dir, partition_dir
from router.archive.scan import ArchiveFile, UnreadableFile, plan, read_file
from router.archive.store import ArchiveStore, StoreError

if TYPE_CHECKING:
    from router.analysis.reader import Pages

log = logging.getLogger(__name__)
AGGREGATE_VERSION = 3  # 2: request-id sets apart (id file, late records), outcome stamps;
# 3: unit tables in shards by unit hash (units._Pending)
FUTURE_REASON = "ts: in the future"
DEFAULT_LATENESS_S = 6 * 3600.0
UNCHECKED = ("a request id reused with other content in two hours, both records on time, is "
             "not detected across rollups (the raw re-fold counts it as a conflict)")  # fmt: skip
FileKey = tuple[tuple[str, int], ...]


@dataclass
class Rollup:
    version: int
    fingerprint: str
    hour: int  # start (unix s)
    files: FileKey  # the hour's pairs files (name, size)
    built_at: float
    metric_names: list[str]
    ids: int  # request ids of the hour (the id file's length)
    foreign: np.ndarray  # fingerprints of its late records (ts in another hour), sorted
    foreign_hours: np.ndarray  # the hour (start) of each one's ts
    first_ts: float | None  # of its records
    last_ts: float | None
    future: bool  # a record was judged "in the future" when it was built
    specs: dict[str, Any]  # the metric specs it was folded with
    views: list[str]  # the challengers it holds a view of
    names: list[str]  # the challengers its records name (ArmSet.part_names)
    # the views (without their request-id sets) are stored apart, in acc-<fp>.pkl, and read
    # only to be merged (_load_acc)


class _AccGone(Exception):
    """An hour's stored accumulator is missing or unreadable (read only when merged)."""

    def __init__(self, start: int, reason: str) -> None:
        super().__init__(reason)
        self.start = start


@dataclass
class RollupUse:
    """What the window's rollups did: hours merged, hours re-folded by reason."""

    used: int = 0
    refolded: Counter[str] = field(default_factory=Counter)
    fallback: str | None = None  # (kept for the report's shape: rollups never fall back now)
    outcome_index: str = "read"  # or "snapshot": the last `router rollup`'s (OutcomeSnapshot)

    def as_dict(self) -> dict[str, Any]:
        return {"used_hours": self.used, "refolded_hours": dict(self.refolded),
                "fallback": self.fallback, "outcome_index": self.outcome_index,
                "unchecked": UNCHECKED}  # fmt: skip


@functools.cache
def code_fingerprint() -> str:
    """A digest of the analysis package's source: a rollup pickled by other analysis code is
    never merged (whatever :data:`AGGREGATE_VERSION` says), only rebuilt."""
    d = hashlib.sha256()
    for path in sorted(Path(__file__).parent.rglob("*.py")):
        d.update(path.relative_to(Path(__file__).parent).as_posix().encode())
        d.update(path.read_bytes())
    return d.hexdigest()


def fingerprint(policy: Policy, kind: str, track_fields: bool, experiment: str) -> str:
    """What a rollup was folded with: aggregate version and code, kind, fields, experiment,
    policy."""
    doc = f"{AGGREGATE_VERSION}|{code_fingerprint()}|{kind}|{int(track_fields)}|{experiment}|"
    doc += policy.model_dump_json()
    return hashlib.sha256(doc.encode()).hexdigest()[:24]


def rollup_dir(experiment: str, hour: Hour) -> str:
    return partition_dir(ROLLUPS, experiment, hour)


def manifest_dir(experiment: str, fp: str) -> str:
    return f"{experiment_dir(ROLLUPS, experiment)}/manifests/{fp}"


# ---------------------------------------------------------------------- safe loading
_ALLOWED = {
    ("builtins", n) for n in ("set", "frozenset", "list", "dict", "tuple", "complex", "slice",
                              "bytearray", "object", "float", "int", "bool", "str", "bytes")
} | {
    ("collections", "Counter"), ("collections", "OrderedDict"), ("copyreg", "_reconstructor"),
    ("numpy", "dtype"), ("numpy", "ndarray"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("polars.dataframe.frame", "DataFrame"), ("polars.series.series", "Series"),
    ("re", "_compile"),  # (the text kind's refusal pattern)
    # the reducers a pending unit table holds
    ("router.analysis.units", "reduce_exposures"), ("router.analysis.units", "reduce_metrics"),
    ("router.analysis.arms", "_reduce_unit_variants"),
}  # fmt: skip


class RollupRefused(pickle.UnpicklingError):
    """A rollup names something a rollup may not hold."""


class _Unpickler(pickle.Unpickler):
    """Resolves only :data:`_ALLOWED` and the classes of ``router.analysis`` and of polars'
    data types: never a function that runs code (``os.system``, ``eval``, ``getattr``…)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        if (module == "router.analysis" or module.startswith("router.analysis.")
                or module == "polars.datatypes.classes"):  # fmt: skip
            obj = super().find_class(module, name)
            if isinstance(obj, type):
                return obj
        raise RollupRefused(f"a rollup may not hold {module}.{name}")


def loads(data: bytes) -> Any:
    """Unpickle a rollup with the restricted unpickler (:class:`RollupRefused` otherwise)."""
    return _Unpickler(io.BytesIO(data)).load()


# ---------------------------------------------------------------------- folding an hour
def _file_key(files: list[ArchiveFile]) -> FileKey:
    return tuple(sorted((f.path.rsplit("/", 1)[-1], f.size) for f in files))


def _by_hour(files: list[ArchiveFile]) -> dict[int, list[ArchiveFile]]:
    out: dict[int, list[ArchiveFile]] = {}
    for f in files:
        out.setdefault(f.hour.start, []).append(f)
    return out


@dataclass
class _Folded:
    """A run of hours folded from raw: its views and its late records."""

    aset: ArmSet  # (detached: without outcome index, see router.analysis.distribute.detach)
    foreign: np.ndarray  # fingerprints (kept records only), with
    foreign_hours: np.ndarray  # the hour of each one's ts


def _fold(job: Any, files: list[ArchiveFile], arms: list[str] | None = None,
          pages: Iterator[Page] | None = None) -> _Folded:  # fmt: skip
    """Fold ``files`` in order into the views of ``arms`` (None: those the files name), as
    :func:`router.analysis.distribute.fold_files` does, noting the records whose ``ts`` is
    not in their partition's hour. ``pages``: the files' pages, read already (one a file, in
    order: :func:`_hour_pages`); consumed whole, and the files read here again should the
    views change (a challenger named after the first page that names one)."""
    from threadpoolctl import threadpool_limits

    from router.analysis.distribute import detach

    store = ArchiveStore.open(job.uri)

    def read() -> Iterator[Page]:
        for f in files:
            yield _job_page(job, store, f, job.now)

    make = job.accumulator
    with threadpool_limits(limits=1, user_api="blas"):
        while True:
            aset = ArmSet(make, arms)
            hs: list[np.ndarray] = []
            ts_hours: list[np.ndarray] = []
            given, pages = pages, None
            for f, page in zip(files, given if given is not None else read(), strict=True):
                if page.cols.height:
                    ts = page.cols["ts"].to_numpy()
                    th = np.floor_divide(ts, 3600).astype(np.int64) * 3600
                    late = th != f.hour.start
                    if late.any():
                        hs.append(page.cols["h"].to_numpy()[late])
                        ts_hours.append(th[late])
                aset.add_page(page)
            if not aset.restart:
                break
            arms = aset.restart_arms()
    h, th = _pairs(np.concatenate(hs) if hs else np.zeros(0, np.int64),
                   np.concatenate(ts_hours) if ts_hours else np.zeros(0, np.int64))  # fmt: skip
    keep = aset.holds(h)  # (not those dropped: another experiment, outside the window)
    return _Folded(detach(aset), h[keep], th[keep])


def _hour_pages(job: Any, todo: list[tuple[int, list[ArchiveFile]]],
                workers: int = 2) -> tuple[Pages, Iterator[Iterator[Page]]]:  # fmt: skip
    """The pages of the hours ``todo`` (in that order), read, prepared and prefolded
    (:func:`router.analysis.arms.prefold_arms`) ``workers`` files at once on parse threads
    while the hour before is folded; and for each hour in turn, its pages (to be consumed
    whole before the next hour's). A rollup build so keeps both cores busy, where one
    thread reading and folding each hour in turn kept about one (measured at 10 M records:
    1.1 cores). ``job.outcomes`` must be frozen (:meth:`OutcomeIndex.freeze`)."""
    from router.analysis.arms import prefold_arms
    from router.analysis.reader import Pages

    store = ArchiveStore.open(job.uri)
    pages = Pages([f for _start, files in todo for f in files], job.schema, workers=workers,
                  now=job.now, prepare=functools.partial(_job_page, job, store))  # fmt: skip
    pages.after = functools.partial(prefold_arms, outcomes=job.outcomes, kind=job.kind)
    stream = iter(pages)
    return pages, (itertools.islice(stream, len(files)) for _start, files in todo)


def _job_page(job: Any, store: ArchiveStore, f: ArchiveFile, now: float) -> Page:
    """The page of one file as a job reads it (its columns and window)."""
    from router.analysis.archive_read import file_page

    return file_page(store, f, job.schema, job.since, job.upto, now)


def _pairs(h: np.ndarray, th: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (fingerprint, hour) pairs, sorted by fingerprint."""
    if not h.size:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    both = np.unique(np.stack([h.astype(np.int64), th.astype(np.int64)], axis=1), axis=0)
    return np.ascontiguousarray(both[:, 0]), np.ascontiguousarray(both[:, 1])


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a, dtype=np.int64), allow_pickle=False)
    return buf.getvalue()


def _load_ids(store: ArchiveStore, experiment: str, start: int, fp: str, n: int) -> np.ndarray:
    """The hour's sorted request-id fingerprints (memory-mapped from a local archive);
    ValueError when the file is missing or not the rollup's."""
    rel = f"{rollup_dir(experiment, Hour(start))}/ids-{fp}.npy"
    try:
        if store.local:
            ids = np.load(store.path(rel), mmap_mode="r", allow_pickle=False)
        else:
            ids = np.load(io.BytesIO(store.read_bytes(rel)), allow_pickle=False)
    except (OSError, ValueError, StoreError) as exc:
        raise ValueError(f"id file {store.describe(rel)}: {exc}") from None
    if ids.dtype != np.int64 or ids.ndim != 1 or ids.size != n:
        raise ValueError(f"id file {store.describe(rel)}: not the rollup's ({ids.size} ids)")
    return ids


def _hits(ids: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Which of the sorted ``queries`` are in the sorted ``ids``."""
    if not ids.size or not queries.size:
        return np.zeros(queries.size, dtype=bool)
    pos = np.searchsorted(ids, queries)
    pos[pos == ids.size] = 0
    return np.asarray(ids[pos] == queries)


# ---------------------------------------------------------------------- outcome files
@dataclass
class _Outcomes:
    """The outcome files an analysis (or a build) reads, with their request-id fingerprints
    read on demand (cached)."""

    store: ArchiveStore
    experiment: str
    since: float | None
    files: dict[tuple[str, int], ArchiveFile]
    unsure: bool = False  # more files unreadable than the coverage names: any may be
    _h: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)
    _manifests: dict[str, frozenset[tuple[str, int]] | None] = field(default_factory=dict)
    _late: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def read(cls, store: ArchiveStore, experiment: str, since: float | None,
             coverage: Any) -> _Outcomes:  # fmt: skip
        """The outcome files the analysis read (those ``coverage`` does not name
        unreadable)."""
        unreadable = {p for p, _r in coverage.unreadable}
        files = plan(store, "outcomes", experiment, since, None).files
        keys = {(f.path, f.size): f for f in files if f.path not in unreadable}
        return cls(store, experiment, since, keys,
                   coverage.unreadable_count > len(coverage.unreadable))  # fmt: skip

    @property
    def key(self) -> list[list[Any]]:
        return [[p, n] for p, n in sorted(self.files)]

    def fingerprints(self, k: tuple[str, int]) -> np.ndarray:
        """The request-id fingerprints of one file's rows (unsorted; rows without one left
        out). A file unreadable now gives none: it is not among the files read, either."""
        from router.analysis.frames import rid_hash

        if k not in self._h:
            try:
                table = read_file(self.store, self.files[k], "outcomes", ["request_id"],
                                  self.since, None)  # fmt: skip
                rid = pl.from_arrow(table.column("request_id"))
                assert isinstance(rid, pl.Series)
                rid = rid.filter(rid.is_not_null() & (rid.str.len_bytes() > 0))
                self._h[k] = rid_hash(rid).to_numpy()
            except UnreadableFile:
                self._h[k] = np.zeros(0, np.int64)
        return self._h[k]

    def manifest(self, fp: str, sha: str) -> frozenset[tuple[str, int]] | None:
        if sha not in self._manifests:
            try:
                doc = orjson.loads(self.store.read_bytes(f"{manifest_dir(self.experiment, fp)}/"
                                                         f"outcomes-{sha}.json"))  # fmt: skip
                self._manifests[sha] = frozenset((str(p), int(n)) for p, n in doc)
            except (FileNotFoundError, StoreError, orjson.JSONDecodeError, TypeError,
                    ValueError) as exc:  # fmt: skip
                log.warning("rollup outcome manifest %s unreadable: %s", sha, exc)
                self._manifests[sha] = None
        return self._manifests[sha]

    def late(self, fp: str, sha: str) -> np.ndarray | None:
        """Sorted fingerprints of the rows of files read now but not in manifest ``sha``
        (archived after it); None when the manifest is unreadable."""
        if sha not in self._late:
            m = self.manifest(fp, sha)
            if m is None:
                return None
            new = [k for k in self.files if k not in m]
            parts = [self.fingerprints(k) for k in new]
            self._late[sha] = np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
        return self._late[sha]


def _read_stamp(store: ArchiveStore, experiment: str, start: int,
                fp: str) -> tuple[str, FileKey] | None:  # fmt: skip
    """An hour's outcome stamp: its manifest and the outcome files joined (None: missing or
    unreadable)."""
    rel = f"{rollup_dir(experiment, Hour(start))}/outcomes-{fp}.json"
    try:
        doc = orjson.loads(store.read_bytes(rel))
        return str(doc["manifest"]), tuple((str(p), int(n)) for p, n in doc["joined"])
    except FileNotFoundError:
        return None
    except (StoreError, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        log.warning("rollup stamp %s unreadable: %s", store.describe(rel), exc)
        return None


def _write_stamp(store: ArchiveStore, experiment: str, start: int, fp: str, sha: str,
                 joined: FileKey) -> None:  # fmt: skip
    doc = {"manifest": sha, "joined": [list(k) for k in joined]}
    store.write_bytes(rollup_dir(experiment, Hour(start)), f"outcomes-{fp}.json",
                      orjson.dumps(doc))  # fmt: skip


def _stamp_ok(stamp: tuple[str, FileKey] | None, outcomes: _Outcomes, fp: str,
              ids: Any) -> bool:  # fmt: skip
    """Whether the outcome rows joining an hour are those it joined: the files it joined are
    all read whole, and no row of a file archived after its manifest names one of its
    requests. ``ids``: a callable giving the hour's id file."""
    if stamp is None:
        return False
    sha, joined = stamp
    if joined and outcomes.unsure:
        return False
    for k in joined:
        if k not in outcomes.files:
            return False  # deleted, unreadable, or before the window's start
        name = PartName.parse(k[0].rsplit("/", 1)[-1])
        if outcomes.since is not None and (name is None
                                           or name.first[0] < outcomes.since * 1000):  # fmt: skip
            return False  # (cut by since: its rows stored before it are not read)
    late = outcomes.late(fp, sha)
    if late is None:
        return False
    return not (late.size and _hits(ids(), late).any())


# ---------------------------------------------------------------------- outcome snapshot
class OutcomeSnapshot(OutcomeIndex):
    """The outcome index of the last ``router rollup`` without its request-joined rows:
    every count, the metric names and kinds, and the unit-joined rows the report needs, but
    nothing to join records to. Used when every hour is served by its rollup and the outcome
    files are exactly those the build read (:func:`outcome_snapshot`); an analysis that
    re-folds an hour reads the outcomes again."""

    requests: int  # request-joined rows (deduplicated)
    plan: list[list[Any]]  # every outcome file of the build (name, size), unreadable ones too
    outcome_files: int
    unreadable: list[tuple[str, str]]
    unreadable_count: int

    @classmethod
    def of(cls, oi: OutcomeIndex, plan_key: list[list[Any]], coverage: Any) -> OutcomeSnapshot:
        final = oi._finalise()
        snap = cls.__new__(cls)
        snap.__dict__.update(oi.__dict__)
        snap._rows, snap._req, snap._unit, snap._kept = [], [], [], LazyIdSet()
        snap._requests = _Requests()
        snap._final = dict(final, req=snap._requests)
        snap.requests = oi.by_request_total
        snap.plan = plan_key
        snap.outcome_files = coverage.outcome_files
        snap.unreadable = list(coverage.unreadable)
        snap.unreadable_count = coverage.unreadable_count
        return snap

    @property
    def by_request_total(self) -> int:
        return self.requests


def _plan_key(files: list[ArchiveFile]) -> list[list[Any]]:
    return sorted([f.path, f.size] for f in files)


def outcome_snapshot(src: Any, policy: Policy, kind: str,
                     track_fields: bool) -> OutcomeSnapshot | None:  # fmt: skip
    """The last ``router rollup``'s outcome snapshot when the outcome files the analysis
    would read are exactly those it read (none archived since, none deleted, none cut by
    ``since``), None otherwise."""
    from router.analysis.archive_read import open_store

    store = open_store(src)
    fp = fingerprint(policy, kind, track_fields, src.experiment)
    mdir = manifest_dir(src.experiment, fp)
    names = [e.name for e in store.list_dir(mdir) if e.name.startswith("snapshot-")]
    if len(names) != 1:
        return None
    files = plan(store, "outcomes", src.experiment, src.since, None).files
    if src.since is not None:
        for f in files:
            name = PartName.parse(f.path.rsplit("/", 1)[-1])
            if name is None or name.first[0] < src.since * 1000:
                return None  # (a file cut by since: not read whole)
    try:
        snap = loads(store.read_bytes(f"{mdir}/{names[0]}"))
    except Exception as exc:  # (a corrupt pickle raises anything: never a crash)
        log.warning("outcome snapshot %s unreadable: %s: %s", store.describe(f"{mdir}/{names[0]}"),
                    type(exc).__name__, exc)  # fmt: skip
        return None
    if not isinstance(snap, OutcomeSnapshot) or snap.plan != _plan_key(files):
        return None
    return snap


def _snapshot_coverage(snap: OutcomeSnapshot, cov: Any) -> None:
    """What reading the outcomes would have added to the coverage."""
    from router.analysis.archive_read import MAX_NAMED_FILES

    cov.outcome_files += snap.outcome_files
    cov.unreadable_count += snap.unreadable_count
    cov.unreadable.extend(snap.unreadable[: max(0, MAX_NAMED_FILES - len(cov.unreadable))])


# ---------------------------------------------------------------------- building
def build_rollups(uri: str, experiment: str, policy: Policy, *, kind: str = "score",
                  track_fields: bool = False, lateness_s: float = DEFAULT_LATENESS_S,
                  now: float | None = None, rebuild: bool = False) -> list[int]:  # fmt: skip
    """Write the rollup of every complete hour (ended ``lateness_s`` before ``now``) that has
    none with this fingerprint and files, or whose requests an outcome archived since it was
    built joins (``rebuild``: every complete hour); re-stamp the others with the outcome
    files read now. The hours written (their starts)."""
    from router.analysis.archive_read import Coverage, load_archive_outcomes
    from router.analysis.distribute import FoldJob
    from router.analysis.frames import record_schema
    from router.analysis.reader import NUMERIC_KINDS

    now = time.time() if now is None else now
    store = ArchiveStore.open(uri)
    store.check(must_exist=True)
    fp = fingerprint(policy, kind, track_fields, experiment)
    hours = _by_hour(plan(store, "pairs", experiment, None, None).files)
    complete = {s: fs for s, fs in hours.items() if Hour(s).end <= now - lateness_s}
    if not complete:
        return []
    stored = {s: (None if rebuild else _stored(store, experiment, s, fp, _file_key(fs)))
              for s, fs in complete.items()}  # fmt: skip
    have = {s: r for s, r in stored.items() if isinstance(r, Rollup)}
    if len(have) == len(complete) and not _manifest_moved(store, experiment, fp, have):
        return []
    oi = OutcomeIndex(policy.data_quality.max_metrics)
    cov = Coverage()
    load_archive_outcomes(oi, store, experiment, None, cov)
    outcomes = _Outcomes.read(store, experiment, None, cov)
    sha = hashlib.sha256(orjson.dumps(outcomes.key)).hexdigest()[:24]
    mdir = manifest_dir(experiment, fp)
    store.write_bytes(mdir, f"outcomes-{sha}.json", orjson.dumps(outcomes.key))
    all_files = _plan_key(plan(store, "outcomes", experiment, None, None).files)
    snap = OutcomeSnapshot.of(oi, all_files, cov)
    store.write_bytes(mdir, f"snapshot-{sha}.pkl", pickle.dumps(snap, pickle.HIGHEST_PROTOCOL))
    todo = {s: fs for s, fs in complete.items() if s not in have}
    for s, r in have.items():  # re-stamp, or rebuild what a late outcome joins
        stamp = _read_stamp(store, experiment, s, fp)
        if stamp is not None and stamp[0] == sha:
            continue
        try:
            ok = _stamp_ok(
                stamp, outcomes, fp, functools.partial(_load_ids, store, experiment, s, fp, r.ids)
            )
        except ValueError:
            ok = False
        if ok and stamp is not None:
            _write_stamp(store, experiment, s, fp, sha, stamp[1])
        else:
            todo[s] = complete[s]
    schema = record_schema(numeric=kind in NUMERIC_KINDS, fields=track_fields,
                           text=kind == "text")  # fmt: skip
    job = FoldJob(uri, experiment, policy, oi, kind, track_fields, None, None, None, schema,
                  now)  # fmt: skip
    written = []
    index = _OutcomeFiles(outcomes) if todo else None
    hours_todo = sorted(todo.items())
    if hours_todo:
        oi.freeze()  # (joined on the parse threads from now on)
        reading, hour_pages = _hour_pages(job, hours_todo)
        try:
            for (start, files), pages in zip(hours_todo, hour_pages, strict=True):
                folded = _fold(job, files, pages=pages)  # (the challengers the hour names)
                written.append(_write_rollup(store, experiment, fp, sha, now, start, files,
                                             folded, oi, index))  # fmt: skip
        finally:
            reading.close()
    for e in store.list_dir(mdir):  # older manifests: no stamp of this fingerprint names them
        if not e.is_dir and e.name not in (f"outcomes-{sha}.json", f"snapshot-{sha}.pkl"):
            store.delete_file(f"{mdir}/{e.name}")
    log.info("rollups: %d hours written", len(written))
    return written


def _write_rollup(store: ArchiveStore, experiment: str, fp: str, sha: str, now: float,
                  start: int, files: list[ArchiveFile], folded: _Folded, oi: OutcomeIndex,
                  index: _OutcomeFiles | None) -> int:  # fmt: skip
    """Write the rollup of the hour ``start`` folded from ``files``; returns ``start``."""
    aset = folded.aset
    ids = aset.request_ids()
    joined = index.joined(ids) if index is not None else ()
    views = list(aset.arms.values())
    firsts = [a.first_ts for a in views if a.first_ts is not None]
    lasts = [a.last_ts for a in views if a.last_ts is not None]
    future = any(
        reason.startswith(FUTURE_REASON) for a in views for reason in a.rejected.counts
    )
    r = Rollup(AGGREGATE_VERSION, fp, start, _file_key(files), now, list(oi.metric_names),
               int(ids.size), folded.foreign, folded.foreign_hours,
               min(firsts) if firsts else None, max(lasts) if lasts else None, future,
               views[0].specs, aset.views(), aset.part_names())  # fmt: skip
    aset.unit_variants._pairs.table()  # (compacted)
    for acc in views:
        acc.policy = None  # type: ignore[assignment]  # (given back when loaded)
        acc.seen, acc.seen_content = IdSet(), LazyIdSet()  # (the id file holds them)
        _compact(acc)
    d = rollup_dir(experiment, Hour(start))
    body = pickle.dumps((fp, start, now, aset), protocol=pickle.HIGHEST_PROTOCOL)
    store.write_bytes(d, f"acc-{fp}.pkl", body)
    store.write_bytes(d, f"ids-{fp}.npy", _npy(ids))
    _write_stamp(store, experiment, start, fp, sha, joined)
    # (written last: a rollup is complete once it is there)
    store.write_bytes(d, f"rollup-{fp}.pkl", pickle.dumps(r, protocol=pickle.HIGHEST_PROTOCOL))
    return start


def _compact(acc: Accumulator) -> None:
    """Reduce what an accumulator keeps pending (unit frames not yet aggregated, samples
    not yet trimmed to their size) before it is stored: the same aggregate, smaller."""
    from router.analysis.sketches import HashSample

    for pending in (acc.units._exposures, acc.units._metrics, acc.units._request_values):
        pending.table()
    for part in (acc.paired, acc.noise):
        for value in vars(part).values():
            if isinstance(value, HashSample):
                value._trim()


def _manifest_moved(store: ArchiveStore, experiment: str, fp: str,
                    have: dict[int, Rollup]) -> bool:  # fmt: skip
    """Whether the outcome files differ from those the rollups were last stamped with."""
    names = [e.name for e in store.list_dir(manifest_dir(experiment, fp))
             if not e.is_dir and e.name.startswith("outcomes-")]  # fmt: skip
    if len(names) != 1:
        return True
    try:
        doc = orjson.loads(store.read_bytes(f"{manifest_dir(experiment, fp)}/{names[0]}"))
    except (FileNotFoundError, StoreError, orjson.JSONDecodeError):
        return True
    files = plan(store, "outcomes", experiment, None, None).files
    if sorted([f.path, f.size] for f in files) != doc:
        return True
    sha = names[0].removeprefix("outcomes-").removesuffix(".json")
    return any((st := _read_stamp(store, experiment, s, fp)) is None or st[0] != sha
               for s in have)  # fmt: skip


class _OutcomeFiles:
    """Every outcome row's request-id fingerprint and file, sorted by fingerprint: which
    files hold a row joining a set of requests (the build's stamps)."""

    def __init__(self, outcomes: _Outcomes) -> None:
        keys = sorted(outcomes.files)
        parts = [outcomes.fingerprints(k) for k in keys]
        self.keys = keys
        h = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        f = np.repeat(np.arange(len(keys), dtype=np.int32), [p.size for p in parts])
        order = np.argsort(h, kind="stable")
        self.h, self.f = h[order], f[order]
        outcomes._h.clear()

    def joined(self, ids: np.ndarray) -> FileKey:
        if not self.h.size or not ids.size:
            return ()
        left = np.searchsorted(self.h, ids, "left")
        right = np.searchsorted(self.h, ids, "right")
        hit = np.nonzero(right > left)[0]
        if not hit.size:
            return ()
        cnt = (right - left)[hit]
        idx = np.repeat(left[hit], cnt) + np.arange(cnt.sum()) - np.repeat(np.cumsum(cnt) - cnt,
                                                                            cnt)  # fmt: skip
        return tuple(self.keys[i] for i in np.unique(self.f[idx]).tolist())


def _stored(store: ArchiveStore, experiment: str, start: int, fp: str,
            files: FileKey) -> Rollup | str:  # fmt: skip
    """The stored rollup of an hour with this fingerprint and these files, or why there is
    none (``missing``; ``unreadable``: truncated, corrupt or a class a rollup may not hold,
    logged; ``version``: another aggregate version; ``files``: the hour's files changed
    since)."""
    rel = f"{rollup_dir(experiment, Hour(start))}/rollup-{fp}.pkl"
    try:
        r = loads(store.read_bytes(rel))
    except FileNotFoundError:
        return "missing"
    except Exception as exc:  # (a corrupt pickle raises anything: never a crash)
        log.warning("rollup %s unreadable: %s: %s", store.describe(rel), type(exc).__name__, exc)
        return "unreadable"
    if not isinstance(r, Rollup):
        return "unreadable"
    if r.version != AGGREGATE_VERSION:
        return "version"
    return r if r.files == files else "files"


# ---------------------------------------------------------------------- using
def usable(r: Rollup, oi: OutcomeIndex, policy: Policy, since: float | None,
           until: float | None, upto: float | None,
           specs: dict[str, Any] | None = None) -> str | None:  # fmt: skip
    """Why the rollup cannot stand in for its hour's re-fold, by what it holds (None: it
    can, unless its outcome stamp or its request ids say otherwise). ``specs``: the metric
    specs inferred from ``oi`` (computed when not given)."""
    if (since is not None and r.hour < since) or (upto is not None and Hour(r.hour).end > upto):
        return "window"
    first, last = r.first_ts, r.last_ts
    if (since is not None and first is not None and first < since) or (
        until is not None and last is not None and last > until
    ):
        return "window"
    if r.future:
        return "rejected"
    if (specs if specs is not None else infer_metric_specs(policy, oi)) != r.specs:
        return "metrics"
    return None


def _load_acc(store: ArchiveStore, experiment: str, r: Rollup) -> ArmSet:
    """The views of a rollup (:class:`_AccGone` when missing, unreadable or from another
    build than the rollup)."""
    rel = f"{rollup_dir(experiment, Hour(r.hour))}/acc-{r.fingerprint}.pkl"
    try:
        fp, start, built_at, acc = loads(store.read_bytes(rel))
    except Exception as exc:  # (a corrupt pickle raises anything: never a crash)
        raise _AccGone(r.hour, f"{store.describe(rel)}: {type(exc).__name__}: {exc}") from None
    if (fp, start, built_at) != (r.fingerprint, r.hour, r.built_at) or not isinstance(acc, ArmSet):
        raise _AccGone(r.hour, f"{store.describe(rel)}: not the rollup's")
    return acc


def _remap(r: Rollup, aset: ArmSet, oi: OutcomeIndex) -> None:
    """Metric ids of the rollup's unit tables as the analysis' outcome index numbers them."""
    names = oi.metric_names
    ids = np.array([names.index(n) if n in names else -1 for n in r.metric_names] or [0],
                   dtype=np.int64)  # fmt: skip
    for acc in aset.arms.values():
        acc.units.renumber_metrics(ids)


class _IdsGone(Exception):
    def __init__(self, start: int, reason: str) -> None:
        super().__init__(reason)
        self.start = start


class _Window:
    """The hours of a window, each served by its rollup or re-folded from raw in runs of
    consecutive re-folded hours (folded once, kept until a run grows)."""

    def __init__(self, store: ArchiveStore, experiment: str, fp: str, job: Any,
                 hours: dict[int, list[ArchiveFile]],
                 rollups: dict[int, Rollup]) -> None:  # fmt: skip
        self.store, self.experiment, self.fp, self.job = store, experiment, fp, job
        self.hours = hours
        self.rollups = rollups
        self.runs: dict[tuple[int, ...], _Folded] = {}
        self._ids: dict[int, np.ndarray] = {}

    def parts(self) -> list[tuple[int, ...]]:
        """The window's parts in hour order: a rollup's hour alone, or a run of re-folded
        hours."""
        out: list[tuple[int, ...]] = []
        run: list[int] = []
        for s in sorted(self.hours):
            if s in self.rollups:
                if run:
                    out.append(tuple(run))
                    run = []
                out.append((s,))
            else:
                run.append(s)
        if run:
            out.append(tuple(run))
        return out

    def folded(self, part: tuple[int, ...]) -> _Folded:
        if part not in self.runs:
            self.runs[part] = _fold(self.job, [f for s in part for f in self.hours[s]])
        return self.runs[part]

    def ids(self, start: int) -> np.ndarray:
        if start not in self._ids:
            r = self.rollups[start]
            try:
                self._ids[start] = _load_ids(self.store, self.experiment, start, self.fp, r.ids)
            except ValueError as exc:
                raise _IdsGone(start, str(exc)) from None
        return self._ids[start]

    def drop_stale_runs(self, parts: list[tuple[int, ...]]) -> None:
        for part in [p for p in self.runs if p not in parts]:
            del self.runs[part]

    def late(self, part: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        if len(part) == 1 and part[0] in self.rollups:
            r = self.rollups[part[0]]
            return r.foreign, r.foreign_hours
        f = self.folded(part)
        return f.foreign, f.foreign_hours

    def contains(self, part: tuple[int, ...], start: int, h: np.ndarray) -> np.ndarray:
        """Which of the sorted ``h`` the part holds (in hour ``start`` for a rollup)."""
        if len(part) == 1 and part[0] in self.rollups:
            return _hits(self.ids(start), h)
        return self.folded(part).aset.holds(h)

    def overlap(self, parts: list[tuple[int, ...]]) -> tuple[int, int] | None:
        """Two parts holding the same request id (the hours of the first and the second),
        or None. Every such pair involves a late record (module docstring)."""
        if not self.hours:
            return None
        part_of = {s: i for i, p in enumerate(parts) for s in p}
        late = [self.late(p) for p in parts]
        # late records of two parts
        h = np.concatenate([x[0] for x in late])
        owner = np.repeat(np.arange(len(parts)), [x[0].size for x in late])
        if h.size > 1:
            order = np.argsort(h, kind="stable")
            hs, os_ = h[order], owner[order]
            same = (hs[1:] == hs[:-1]) & (os_[1:] != os_[:-1])
            if same.any():
                i = int(np.nonzero(same)[0][0])
                a, b = sorted((int(os_[i]), int(os_[i + 1])))
                return parts[a][0], parts[b][-1]
        # a late record and the hour of its ts
        for i, (fh, fth) in enumerate(late):
            for t in np.unique(fth).tolist():
                j = part_of.get(int(t))
                if j is None or j == i:
                    continue
                q = np.sort(fh[fth == t])
                if self.contains(parts[j], int(t), q).any():
                    a, b = sorted((i, j))
                    return parts[a][0], parts[b][-1]
        return None


def fold_with_rollups(
    src: Any, policy: Policy, oi: OutcomeIndex, *, kind: str, track_fields: bool,
    arms: list[str] | None = None, broken: frozenset[int] = frozenset(),
) -> tuple[ArmSet, RollupUse] | None:  # fmt: skip
    """The window's challenger views from rollups where usable and raw re-folds elsewhere,
    merged in hour order (the hours between two copies of a replayed record re-folded as one
    run). ``arms``: the challengers asked for (``--shares``), else those the records name; a
    part without the views the window needs is re-folded with them (rollups counted as
    ``arms``). None when ``oi`` is an :class:`OutcomeSnapshot` and an hour must be re-folded
    (it has no request rows to join): read the outcomes and call again."""
    from router.analysis.archive_read import archive_files, open_store
    from router.analysis.distribute import FoldJob, attach
    from router.analysis.frames import record_schema
    from router.analysis.reader import NUMERIC_KINDS, id_until

    upto = id_until(src)
    schema = record_schema(numeric=kind in NUMERIC_KINDS, fields=track_fields,
                           text=kind == "text")  # fmt: skip
    files, _prepare = archive_files(src, schema, upto)
    store = open_store(src)
    now = time.time()
    job = FoldJob(src.archive, src.experiment, policy, oi, kind, track_fields, src.since,
                  src.until, upto, schema, now)  # fmt: skip
    fp = fingerprint(policy, kind, track_fields, src.experiment)
    use = RollupUse()
    hours = _by_hour(files)
    outcomes = _Outcomes.read(store, src.experiment, src.since, src.coverage)
    rollups: dict[int, Rollup] = {}
    specs = infer_metric_specs(policy, oi)
    for start, fs in sorted(hours.items()):
        r = _stored(store, src.experiment, start, fp, _file_key(fs))
        r = "unreadable" if start in broken else r  # (its accumulator, found so before)
        why = r if isinstance(r, str) else usable(r, oi, policy, src.since, src.until, upto,
                                                  specs)  # fmt: skip
        if isinstance(r, Rollup) and why is None:
            stamp = _read_stamp(store, src.experiment, start, fp)
            try:
                ok = _stamp_ok(stamp, outcomes, fp, functools.partial(
                    _load_ids, store, src.experiment, start, fp, r.ids))  # fmt: skip
                why = None if ok else ("outcomes" if stamp is not None else "unreadable")
            except ValueError as exc:
                log.warning("rollup of %s: %s", Hour(start).path, exc)
                why = "unreadable"
        if isinstance(r, Rollup) and why is None:
            rollups[start] = r
        else:
            use.refolded[why or "missing"] += 1
    window = _Window(store, src.experiment, fp, job, hours, rollups)
    snapshot = isinstance(oi, OutcomeSnapshot)
    while True:
        if snapshot and (len(rollups) < len(hours) or not hours):
            return None  # (before any raw fold: it would join no request row)
        parts = window.parts()
        window.drop_stale_runs(parts)
        try:
            pair = window.overlap(parts)
        except _IdsGone as exc:  # an id file gone or damaged since: re-fold its hour
            log.warning("rollups: %s", exc)
            del rollups[exc.start]
            use.refolded["unreadable"] += 1
            continue
        if pair is None:
            break
        for s in sorted(hours):  # the hours between the two copies: one raw run
            if pair[0] <= s <= pair[1] and s in rollups:
                del rollups[s]
                use.refolded["replayed"] += 1
    # the views the window needs: those a sequential fold of the parts would end with
    names = [rollups[p[0]].names if len(p) == 1 and p[0] in rollups
             else window.folded(p).aset.part_names() for p in parts]  # fmt: skip
    agreed = agreed_arms(arms, names)
    if snapshot and any(set(rollups[p[0]].views) != set(agreed) for p in parts):
        return None  # (a rollup without a view the window needs: re-folded, below)
    if snapshot:
        use.outcome_index = "snapshot"
    out: ArmSet | None = None
    for part in parts:
        files_of = [f for s in part for f in hours[s]]
        if len(part) == 1 and part[0] in rollups:
            r = rollups[part[0]]
            if set(r.views) != set(agreed):  # a rollup without a view the window needs
                use.refolded["arms"] += 1
                one = _fold(job, files_of, agreed).aset
            else:
                try:
                    one = _load_acc(store, src.experiment, r)
                except _AccGone as exc:  # (gone since it was listed): that hour re-folded
                    log.warning("rollups: %s", exc)
                    if snapshot:
                        return None
                    return fold_with_rollups(src, policy, oi, kind=kind,
                                             track_fields=track_fields, arms=arms,
                                             broken=broken | {exc.start})  # fmt: skip
                _remap(r, one, oi)
                use.used += 1
        else:
            one = window.folded(part).aset
            window.runs.pop(part)  # (merged below: not kept twice)
            if set(one.views()) != set(agreed):
                one = _fold(job, files_of, agreed).aset
        attach(one, oi)
        for acc in one.arms.values():
            acc.policy = policy
        if out is None:
            out = one
        else:
            out.merge(one)
    if out is None:
        out = attach(_fold(job, [], agreed).aset, oi)
    out.arms = {n: out.arms[n] for n in agreed}  # (the agreed order)
    out.order = list(agreed)
    for acc in out.arms.values():
        acc.outcomes, acc.policy, acc.now = oi, policy, now
        acc.since, acc.until, acc.experiment = src.since, src.until, src.experiment
    if snapshot:
        assert isinstance(oi, OutcomeSnapshot)
        _snapshot_coverage(oi, src.coverage)
    return out, use
