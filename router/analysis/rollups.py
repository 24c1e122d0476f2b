"""Hourly rollups of an archive: each complete hour's folded aggregate, stored beside its
partition and merged instead of re-folded (issue 14, item 2).

A rollup is the :class:`~router.analysis.arms.ArmSet` of one hour partition's records (one
:class:`~router.analysis.accumulate.Accumulator` per challenger's view; the state the Dask
executor already pickles and merges), folded against the outcomes
archived when it was built, and written to
``<uri>/rollups/experiment=<e>/date=…/hour=…/rollup-<fingerprint>.pkl`` once the hour is older
than ``lateness_s`` (:func:`build_rollups`; ``router rollup``). It is tagged with
:data:`AGGREGATE_VERSION` and a fingerprint of what it was folded with (aggregate version, a
digest of the analysis code, policy, prediction kind, captured fields, experiment), and
records the hour's pairs files (name and size), the metric names of its outcome index and a
digest of every outcome row it joined.

``router analyze --archive URI --rollups`` uses an hour's rollup only when all of these hold,
and re-folds the hour from raw Parquet otherwise (counted per reason in the report's
``archive.rollups``):

- ``missing``: a rollup with this fingerprint (aggregate version, analysis code, policy,
  kind, fields) exists, and it is readable (``unreadable``: truncated, corrupt);
- ``files``: the hour's pairs files are still those it was built from;
- ``window``: the hour lies inside the window (stored from ``since`` to the replay slack after
  ``until``; every record's ``ts`` within ``[since, until]``);
- ``outcomes``: the outcome rows that join to the hour's requests *now* are exactly those it
  joined (digest over request-id fingerprint, metric name and value in index order): an
  outcome that arrived after the rollup, or one the window's outcome read leaves out, means a
  re-fold of that hour;
- ``metrics``: the metric specs the analysis infers from its outcomes equal the rollup's
  (a new metric, a metric no longer binary); metric ids are remapped by name;
- ``rejected``: no record of the hour was judged "in the future" at build time;
- ``arms`` (A/B/n): the rollup holds a view for each challenger the window's analysis needs
  (:func:`~router.analysis.arms.agreed_arms`): a rollup holds the views of the challengers its
  own hour names, so an hour before a challenger was added (whose champion-served requests
  belong to that challenger's view too) is re-folded with every view.

Parts (rollups, and runs of re-folded hours) are merged in hour order, which gives the
sequential fold's aggregates; a request id in two parts (a replay across hours) cannot be
dropped once merged, so any such overlap makes the whole window re-fold from raw. The report
therefore equals the raw re-fold (tests/archive/test_rollups.py).

Rollups are Python pickles: load them only from an archive you trust as you trust this code
(whoever can write the archive can write a rollup).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import pickle
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from router.analysis.accumulate import infer_metric_specs
from router.analysis.arms import ArmSet, agreed_arms
from router.analysis.outcomes_index import OutcomeIndex
from router.analysis.policy import Policy
from router.archive.layout import ROLLUPS, Hour, partition_dir
from router.archive.scan import ArchiveFile, plan
from router.archive.store import ArchiveStore

log = logging.getLogger(__name__)
AGGREGATE_VERSION = 1
FUTURE_REASON = "ts: in the future"
DEFAULT_LATENESS_S = 6 * 3600.0


@dataclass
class Rollup:
    version: int
    fingerprint: str
    hour: int  # start (unix s)
    files: tuple[tuple[str, int], ...]
    built_at: float
    metric_names: list[str]
    joined: str  # digest of the outcome rows joined
    arms: ArmSet  # the views of the challengers the hour names


@dataclass
class RollupUse:
    """What the window's rollups did: hours merged, hours re-folded by reason."""

    used: int = 0
    refolded: Counter[str] = field(default_factory=Counter)
    fallback: str | None = None  # the whole window re-folded, and why

    def as_dict(self) -> dict[str, Any]:
        return {"used_hours": self.used, "refolded_hours": dict(self.refolded),
                "fallback": self.fallback}  # fmt: skip


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


def _name_codes(names: list[str]) -> np.ndarray:
    codes = [int.from_bytes(hashlib.sha256(n.encode()).digest()[:8], "little", signed=True)
             for n in names]  # fmt: skip
    return np.array(codes or [0], dtype=np.int64)


def joined_digest(arms: ArmSet, oi: OutcomeIndex) -> str:
    """A digest of the outcome rows of ``oi`` that join to the requests of ``arms``' views,
    in index order (request-id fingerprint, metric name, value)."""
    ids = arms.request_ids()
    h, m, v = oi.rows
    left, right = oi.lookup(ids, presorted=True)
    cnt = right - left
    hits = np.nonzero(cnt)[0]
    if not hits.size:
        return hashlib.sha256(b"none").hexdigest()
    counts = cnt[hits]
    idx = np.repeat(left[hits], counts) + np.arange(counts.sum()) - np.repeat(
        np.cumsum(counts) - counts, counts
    )
    codes = _name_codes(oi.metric_names)[m[idx].astype(np.int64)]
    d = hashlib.sha256()
    for arr in (h[idx].astype(np.int64), codes, v[idx].astype(np.float64)):
        d.update(np.ascontiguousarray(arr).tobytes())
    return d.hexdigest()


def _file_key(files: list[ArchiveFile]) -> tuple[tuple[str, int], ...]:
    return tuple(sorted((f.path.rsplit("/", 1)[-1], f.size) for f in files))


def _by_hour(files: list[ArchiveFile]) -> dict[int, list[ArchiveFile]]:
    out: dict[int, list[ArchiveFile]] = {}
    for f in files:
        out.setdefault(f.hour.start, []).append(f)
    return out


# ---------------------------------------------------------------------- building
def build_rollups(uri: str, experiment: str, policy: Policy, *, kind: str = "score",
                  track_fields: bool = False, lateness_s: float = DEFAULT_LATENESS_S,
                  now: float | None = None, rebuild: bool = False) -> list[int]:  # fmt: skip
    """Write the rollup of every complete hour (ended ``lateness_s`` before ``now``) that has
    none with this fingerprint and files (``rebuild``: every complete hour); the hours
    written (their starts)."""
    from router.analysis.archive_read import Coverage, load_archive_outcomes
    from router.analysis.distribute import FoldJob, fold_files
    from router.analysis.frames import record_schema
    from router.analysis.reader import NUMERIC_KINDS

    now = time.time() if now is None else now
    store = ArchiveStore.open(uri)
    store.check(must_exist=True)
    fp = fingerprint(policy, kind, track_fields, experiment)
    hours = _by_hour(plan(store, "pairs", experiment, None, None).files)
    todo = {s: fs for s, fs in hours.items()
            if Hour(s).end <= now - lateness_s
            and (rebuild or not isinstance(_stored(store, experiment, s, fp, _file_key(fs)),
                                           Rollup))}  # fmt: skip
    if not todo:
        return []
    oi = OutcomeIndex(policy.data_quality.max_metrics)
    load_archive_outcomes(oi, store, experiment, None, Coverage())
    schema = record_schema(numeric=kind in NUMERIC_KINDS, fields=track_fields,
                           text=kind == "text")  # fmt: skip
    job = FoldJob(uri, experiment, policy, oi, kind, track_fields, None, None, None, schema,
                  now)  # fmt: skip
    written = []
    for start, files in sorted(todo.items()):
        arms = fold_files(job, files)  # (the challengers the hour names)
        r = Rollup(AGGREGATE_VERSION, fp, start, _file_key(files), now,
                   list(oi.metric_names), joined_digest(arms, oi), arms)  # fmt: skip
        for acc in arms.arms.values():
            acc.policy = None  # type: ignore[assignment]  # (given back when loaded)
        blob = pickle.dumps(r, protocol=pickle.HIGHEST_PROTOCOL)
        store.write_bytes(rollup_dir(experiment, Hour(start)), f"rollup-{fp}.pkl", blob)
        written.append(start)
    log.info("rollups: %d hours written", len(written))
    return written


def _stored(store: ArchiveStore, experiment: str, start: int, fp: str,
            files: tuple[tuple[str, int], ...]) -> Rollup | str:  # fmt: skip
    """The stored rollup of an hour with this fingerprint and these files, or why there is
    none (``missing``, ``unreadable``: truncated or corrupt, logged; ``files``: the hour's
    files changed since)."""
    rel = f"{rollup_dir(experiment, Hour(start))}/rollup-{fp}.pkl"
    try:
        r = pickle.loads(store.read_bytes(rel))
    except FileNotFoundError:
        return "missing"
    except Exception as exc:  # (a corrupt pickle raises anything: never a crash)
        log.warning("rollup %s unreadable: %s: %s", store.describe(rel), type(exc).__name__, exc)
        return "unreadable"
    if not isinstance(r, Rollup) or r.version != AGGREGATE_VERSION:
        return "unreadable"
    return r if r.files == files else "files"


# ---------------------------------------------------------------------- using
def usable(r: Rollup, oi: OutcomeIndex, policy: Policy, since: float | None,
           until: float | None, upto: float | None) -> str | None:  # fmt: skip
    """Why the rollup cannot stand in for its hour's re-fold (None: it can; whether it holds
    the views the window needs is known once every hour's challengers are)."""
    if (since is not None and r.hour < since) or (upto is not None and Hour(r.hour).end > upto):
        return "window"
    views = list(r.arms.arms.values())
    for acc in views:
        first, last = acc.first_ts, acc.last_ts
        if (since is not None and first is not None and first < since) or (
            until is not None and last is not None and last > until
        ):
            return "window"
    for acc in views:
        if any(reason.startswith(FUTURE_REASON) for reason in acc.rejected.counts):
            return "rejected"
    specs = infer_metric_specs(policy, oi)
    if any(acc.specs != specs for acc in views):
        return "metrics"
    if joined_digest(r.arms, oi) != r.joined:
        return "outcomes"
    return None


def _remap(r: Rollup, oi: OutcomeIndex) -> None:
    """Metric ids of the rollup's unit tables as the analysis' outcome index numbers them."""
    import polars as pl

    names = oi.metric_names
    ids = np.array([names.index(n) if n in names else -1 for n in r.metric_names] or [0],
                   dtype=np.int64)  # fmt: skip
    for acc in r.arms.arms.values():
        for pending in (acc.units._metrics, acc.units._request_values):
            t = pending.table()
            if t.height:
                pending.frames = [t.with_columns(
                    pl.Series("metric", ids[t["metric"].to_numpy()], dtype=pl.Int64)
                )]  # fmt: skip


def fold_with_rollups(src: Any, policy: Policy, oi: OutcomeIndex, *, kind: str,
                      track_fields: bool, arms: list[str] | None = None,
                      ) -> tuple[ArmSet, RollupUse] | None:  # fmt: skip
    """The window's challenger views from rollups where usable and raw re-folds elsewhere,
    merged in hour order; None when the whole window must be re-folded (a request id in two
    parts). ``arms``: the challengers asked for (``--shares``), else those the records name;
    a part without the views the window needs is re-folded with them (rollups counted as
    ``arms``)."""
    from router.analysis.archive_read import archive_files, open_store
    from router.analysis.distribute import FoldJob, Merger, attach, fold_files
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
    # parts in hour order: (its files, its rollup or None for a run of hours re-folded)
    entries: list[tuple[list[ArchiveFile], ArmSet | None]] = []
    for start, fs in sorted(_by_hour(files).items()):
        r = _stored(store, src.experiment, start, fp, _file_key(fs))
        why = r if isinstance(r, str) else usable(r, oi, policy, src.since, src.until, upto)
        if isinstance(r, Rollup) and why is None:
            _remap(r, oi)
            for acc in r.arms.arms.values():
                acc.policy, acc.outcomes = policy, oi
            entries.append((list(fs), r.arms))
            use.used += 1
            continue
        use.refolded[why or "missing"] += 1
        if entries and entries[-1][1] is None:
            entries[-1][0].extend(fs)
        else:
            entries.append((list(fs), None))
    # the re-folds with the views their records name; then the views the window needs
    parts = [a if a is not None else fold_files(job, fs, arms) for fs, a in entries]
    agreed = agreed_arms(arms, [p.part_names() for p in parts])
    merger = Merger(oi, agreed)
    for i, (fs, held) in enumerate(entries):
        part, parts[i] = parts[i], ArmSet(None)  # (its slot freed once merged)
        if part.restart or set(part.views()) != set(agreed):
            if held is not None:  # a rollup without a view the window needs
                use.used -= 1
                use.refolded["arms"] += 1
            part = fold_files(job, fs, agreed)
        merger.add(i, attach(part, oi))
    if merger.cross_task_duplicates:
        return None
    out = merger.result() if parts else None
    if out is None:
        out = attach(fold_files(job, [], agreed), oi)
    for acc in out.arms.values():
        acc.outcomes, acc.policy, acc.now = oi, policy, now
        acc.since, acc.until, acc.experiment = src.since, src.until, src.experiment
    return out, use
