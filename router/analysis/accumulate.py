"""Reduce captured records into mergeable aggregates (pure; no I/O).

:class:`Accumulator` consumes pages of records (DESIGN.md schema v1, decoded into columns by
:mod:`router.analysis.frames`), joins the outcomes of an
:class:`~router.analysis.outcomes_index.OutcomeIndex`, and keeps only summaries:
counts, :class:`~router.analysis.sketches.Moments` (Welford: centred, so merges are exact and
nothing cancels), latency histograms, per-unit state for the live split
(:class:`~router.analysis.units.UnitTable`), and three parts with their own modules: the
mirrored pairs (:class:`~router.analysis.pairs.PairAggregates`: divergence, quality, a bottom-k
hash sample), per-segment tallies (:class:`~router.analysis.segments.SegmentTable`) and captured
input fields (:class:`~router.analysis.fields.FieldHistograms`). ``a.merge(b)`` of two
accumulators over disjoint records equals one accumulator over both (tested), so windows,
shards and processes can be analysed apart and combined. The report is computed from an
accumulator by :mod:`router.analysis.report`.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from router.analysis.cbpe import CbpeSums
from router.analysis.fields import FieldHistograms
from router.analysis.frames import (
    RECORD_SCHEMA,
    Invalid,
    Page,
    prepare_records,
    records_chunk,
)
from router.analysis.outcomes_index import OutcomeIndex, count_experiment
from router.analysis.pairs import PairAggregates
from router.analysis.policy import MetricSpec, Policy
from router.analysis.segments import SegmentTable
from router.analysis.sketches import (
    LAT_BINS,
    IdSet,
    LazyIdSet,
    LogHistogram,
    Moments,
    lat_bins,
)
from router.analysis.units import (
    UnitTable,
    exposure_rows,
    metric_rows,
    reduce_exposures,
    reduce_metrics,
    shards,
)

VARIANTS = ("champion", "challenger")
MAX_CONFLICT_EXAMPLES = 5


@dataclass(slots=True)
class Prefold:
    """A page's outcome join and unit rows (see :func:`prefold`)."""

    cols: pl.DataFrame  # the columns they are of (valid for these only)
    join: tuple[np.ndarray, np.ndarray, np.ndarray]  # OutcomeIndex.join of the rows
    # reduced, by unit shard (units.shards); exposures' ``combo``: the page's segment code
    exposures: dict[int, pl.DataFrame] | None
    metrics: dict[int, pl.DataFrame] | None
    kind: str  # the prediction kind the predictions below are read as
    preds: _Predictions  # the answers' predictions (see _predictions)
    rows: _RowArrays  # per-row arrays of the columns (see _row_arrays)


def prefold(page: Page, outcomes: OutcomeIndex, kind: str = "score") -> Page:
    """Do the part of folding ``page`` that no accumulator state enters where the page is
    parsed (a parse thread: ``Pages.after``), not on the one thread that folds: the outcome
    join, the page's unit rows reduced and split by shard (measured at 50M records: a third
    of the folding thread's time), the predictions as numbers, the per-row arrays and the
    latency bins. :meth:`Accumulator.add_page` uses it when it folds the page's rows as they
    are (none of another experiment, outside the window or repeated), and otherwise does the
    same itself. ``outcomes`` must be frozen (:meth:`OutcomeIndex.freeze`)."""
    if page.cols.height:
        page.pre = _prefolded(page.cols, outcomes, kind)
    return page


@dataclass(slots=True)
class _Predictions:
    """Each side's predictions of working answers (null on errors), and as numbers (NaN where
    not one) for the numeric kinds (None for the others)."""

    cp: pl.Series
    hp: pl.Series
    cpf: np.ndarray | None
    hpf: np.ndarray | None


def _predictions(cols: pl.DataFrame, kind: str) -> _Predictions:
    cp = cols["cp"].set(cols["ce"], None)
    hp = cols["hp"].set(cols["he"], None)
    if kind not in ("score", "value"):
        return _Predictions(cp, hp, None, None)
    cpf = cp.cast(pl.Float64, strict=False).to_numpy()
    hpf = hp.cast(pl.Float64, strict=False).to_numpy()
    return _Predictions(cp, hp, cpf, hpf)


@dataclass(slots=True)
class _RowArrays:
    """Per-row arrays the fold reads: variant (int64), ts, each side's error flag and
    latency, the served side's error, latency and status class (-1: none), whether it has a
    latency, and the latency bins of each side (:func:`lat_bins`)."""

    va: np.ndarray
    ts: np.ndarray
    ce: np.ndarray
    he: np.ndarray
    cl: np.ndarray
    hl: np.ndarray
    is0: np.ndarray
    erra: np.ndarray
    lat: np.ndarray
    has_lat: np.ndarray
    cls: np.ndarray
    cbin: np.ndarray
    hbin: np.ndarray


def _row_arrays(cols: pl.DataFrame) -> _RowArrays:
    va = cols["v"].to_numpy().astype(np.int64)
    ce, he = cols["ce"].to_numpy(), cols["he"].to_numpy()
    cl, hl = cols["cl"].to_numpy(), cols["hl"].to_numpy()
    is0 = va == 0
    lat = np.where(is0, cl, hl)
    status = np.where(is0, _ints(cols["cs"], -1), _ints(cols["hs"], -1))
    return _RowArrays(va, cols["ts"].to_numpy(), ce, he, cl, hl, is0, np.where(is0, ce, he),
                      lat, np.isfinite(lat), np.where(status >= 0, status // 100, -1),
                      lat_bins(cl), lat_bins(hl))  # fmt: skip


def _prefolded(cols: pl.DataFrame, outcomes: OutcomeIndex, kind: str) -> Prefold:
    unit = cols["unit"]
    join = outcomes.join(cols["h"].to_numpy())
    rows = _row_arrays(cols)
    ex = met = None
    if unit.null_count() < cols.height:
        ex = shards(reduce_exposures(exposure_rows(unit, rows.va, rows.ts,
                                                   cols["segc"].to_numpy())))  # fmt: skip
        if join[0].size:
            met = shards(reduce_metrics(metric_rows(unit.gather(join[0]), join[1], join[2])))
    return Prefold(cols, join, ex, met, kind, _predictions(cols, kind), rows)


def _ints(s: pl.Series, null: int) -> np.ndarray:
    """An integer column as numpy, nulls as ``null`` (without a polars plan when it has none)."""
    return s.to_numpy() if not s.null_count() else s.fill_null(null).to_numpy()


def infer_metric_specs(
    policy: Policy, outcomes: OutcomeIndex
) -> dict[str, tuple[MetricSpec, bool]]:
    """Declared specs, plus inferred ones for undeclared metrics (binary → proportion). The label
    metric is the ground truth of the paired quality section, not a business metric of the live
    split: it is not inferred (counting it twice would also put it in the Holm family); nor are
    the metrics named as CUPED covariates (``policy.cuped.covariates``)."""
    out: dict[str, tuple[MetricSpec, bool]] = {
        name: (spec, False) for name, spec in policy.metrics.items()
    }
    covariates = set(policy.cuped.covariates.values())  # pre-exposure values, not outcomes
    for name, info in sorted(outcomes.metrics.items()):
        if name not in out and name != policy.label_metric and name not in covariates:
            kind = "proportion" if info["binary"] else "mean"
            out[name] = (MetricSpec(type=kind), True)  # type: ignore[arg-type]
    return out


class Accumulator:
    """All aggregates of one analysis; feed records with :meth:`add`, combine with :meth:`merge`."""

    def __init__(
        self,
        policy: Policy,
        outcomes: OutcomeIndex,
        *,
        kind: str = "score",
        since: float | None = None,
        until: float | None = None,
        experiment: str | None = None,
        track_fields: bool = True,
    ) -> None:
        self.policy = policy
        self.outcomes = outcomes
        self.kind = kind
        self.since, self.until, self.experiment = since, until, experiment
        self.specs = infer_metric_specs(policy, outcomes)
        self.request_metrics = [m for m, (s, _) in self.specs.items() if s.per == "request"]
        self.thresholds = list(policy.divergence.thresholds)
        self.label_metric = policy.label_metric
        self.positive_class = policy.divergence.positive_class
        self.track_fields = track_fields

        self.records = 0
        self.rejected = Invalid()  # invalid lines by reason, with the first few places
        self.duplicates = 0
        # a request id seen before with another ts, unit or variant: a reused id, not a replay
        self.conflicts = 0
        self.conflict_examples: list[str] = []
        self.outside_window = 0
        self.outside_span: tuple[float, float] | None = None  # ts range of those
        self.other_experiments: Counter[str] = Counter()
        self.first_ts: float | None = None
        self.last_ts: float | None = None
        # request ids seen, as 64-bit fingerprints (a collision among 10^7 ids has odds of
        # about 10^-6), and fingerprints of (request id, ts, unit, variant) for conflicts; past
        # a few million ids both go to temporary files (sketches.SPILL_AT): RAM keeps the
        # filter and a fence index of the ids, about 1.2-2.2 bytes a record
        self.seen = IdSet()
        self.seen_content = LazyIdSet()  # (queried only when a request id repeats)
        self.now = time.time()  # what "in the future" means for a record's ts

        self.requests = [0, 0]
        self.errors = [0, 0]
        self.status_classes: list[Counter[str]] = [Counter(), Counter()]
        self.latency = [LogHistogram(), LogHistogram()]
        self.latency_moments = [Moments(), Moments()]
        self.units = UnitTable()
        seg = policy.segments
        self.segments = SegmentTable(seg.max_tracked_values, seg.max_fields)
        # per-request metrics of requests without a unit: each request is its own cluster
        # (those with a unit are summed per unit in the unit table)
        self.request_metric_moments: dict[str, list[Moments]] = {
            m: [Moments(), Moments()] for m in self.request_metrics
        }
        self.joined_by_request = 0

        self.paired = PairAggregates(policy, kind)
        # the noise floor: the champion against its own repeat on the same requests
        self.noise = PairAggregates(policy, kind)
        # expected accuracy without labels (CBPE) per model, over all its score predictions
        self.cbpe = [CbpeSums(), CbpeSums()]
        self.fields = FieldHistograms()
        # archive files that could not be read: how many, and the first few (path, reason)
        self.unreadable_files = 0
        self.unreadable_examples: list[tuple[str, str]] = []

    # ---------------------------------------------------------------- feeding
    @property
    def invalid(self) -> int:
        return self.rejected.total

    def add(self, records: Iterable[Any]) -> None:
        """Fold in records given as dicts (DESIGN.md schema), judged as lines of a file are;
        invalid ones are named ``item N`` (1-based) in the report."""
        chunk, rejected = records_chunk(records)
        page = prepare_records(chunk, RECORD_SCHEMA, self.now)
        page.rejected.merge(rejected)
        self.add_page(page)

    def expect_records(self, n: int) -> None:
        """About ``n`` records are to come (an estimate): the request-id set is sized for them
        (:meth:`~router.analysis.sketches.IdSet.reserve`)."""
        self.seen.reserve(n)

    def add_page(self, page: Page) -> None:
        """Fold in a page of valid records (:func:`router.analysis.frames.prepare_records`).
        Everything is columnar: filters and dedupe as masks, the outcome join by binary
        search, aggregates by ``bincount`` per variant and segment; Python loops run per
        segment combination and per distinct contract break, not per record."""
        self.rejected.merge(page.rejected)
        if page.skipped:
            self._skip_files(page.skipped, len(page.skipped))
        cols = page.cols
        if not cols.height:
            return
        seg_keys, folded = self.segments.page_keys(page.segments)
        # another experiment's records (a file may hold several), then the window
        if self.experiment and any(e != self.experiment for e in page.experiments):
            is_other = pl.col("exp").is_not_null() & (pl.col("exp") != self.experiment)
            other = cols.select(is_other).to_series().to_numpy()
            if other.any():
                for name, n in cols.filter(other).group_by("exp").len().iter_rows():
                    count_experiment(self.other_experiments, name, n)
                cols = cols.filter(~other)
        if self.since is not None or self.until is not None:
            inside = pl.lit(True)
            if self.since is not None:
                inside = inside & (pl.col("ts") >= self.since)
            if self.until is not None:
                inside = inside & (pl.col("ts") <= self.until)
            mask = cols.select(inside).to_series().to_numpy()
            if not mask.all():
                out = cols["ts"].filter(~mask)
                lo, hi = float(out.min()), float(out.max())  # type: ignore[arg-type]
                span = self.outside_span
                self.outside_span = (lo, hi) if span is None else (min(span[0], lo),
                                                                   max(span[1], hi))
                self.outside_window += int(out.len())
                cols = cols.filter(mask)
        if not cols.height:
            return
        h = cols["h"].to_numpy()
        keep = self._dedupe(cols, h)
        if keep is not None:
            cols, h = cols.filter(keep), h[keep]
        if not cols.height:
            return
        # (a page is sorted by fingerprint; all of it kept: the same array as queried)
        self.seen.add_new(h, presorted=True)
        self.seen_content.add_new(cols["k"].to_numpy())
        self.records += cols.height
        if folded:
            per_key = np.bincount(cols["segc"].to_numpy(), minlength=len(seg_keys))
            for code, fields in folded.items():
                for name in fields:
                    self.segments.overflow[name] += int(per_key[code])
        pre = page.pre
        if pre is not None and (pre.cols is not cols or pre.kind != self.kind):
            pre = None  # (rows filtered here: made again below)
        self._fold(cols, h, seg_keys, pre)

    def _skip_files(self, examples: list[tuple[str, str]], n: int) -> None:
        self.unreadable_files += n
        room = MAX_CONFLICT_EXAMPLES - len(self.unreadable_examples)
        self.unreadable_examples.extend(examples[: max(0, room)])

    def _dedupe(self, cols: pl.DataFrame, h: np.ndarray) -> np.ndarray | None:
        """The rows to keep (None: all): the first of each request id, within the page
        (sorted by fingerprint, so repeats are adjacent and the first stays first) and against
        every page before. A repeat with the same content (ts, unit, variant) is a duplicate (a
        replay); with other content, a conflict (a reused request id). ``h``: the column h."""
        first = np.ones(h.size, dtype=bool)
        if h.size > 1:
            first[1:] = h[1:] != h[:-1]
        keep = first & ~self.seen.contains(h, presorted=True)
        if keep.all():
            return None
        rest = np.nonzero(~keep)[0]
        k = cols["k"].to_numpy()
        new_in_page = cols.select(pl.col("k").is_first_distinct()).to_series().to_numpy()
        known = ~new_in_page[rest] | self.seen_content.contains(k[rest])
        self.duplicates += int(np.count_nonzero(known))
        clash = rest[~known]
        if clash.size:
            self.conflicts += int(clash.size)
            self.seen_content.add_new(np.unique(k[clash]))  # a replay of it is a duplicate
            if len(self.conflict_examples) < MAX_CONFLICT_EXAMPLES:
                for rid in cols["rid"].gather(clash).unique(maintain_order=True).to_list():
                    if rid not in self.conflict_examples:
                        self.conflict_examples.append(rid)
                del self.conflict_examples[MAX_CONFLICT_EXAMPLES:]
        return keep

    def _fold(self, cols: pl.DataFrame, h: np.ndarray, local: list[tuple[Any, ...]],
              pre: Prefold | None = None) -> None:  # fmt: skip
        n = cols.height
        if pre is None:  # (not made on the parse thread: see prefold)
            pre = _prefolded(cols, self.outcomes, self.kind)
        rw = pre.rows
        va, ts, ce, he, cl, hl = rw.va, rw.ts, rw.ce, rw.he, rw.cl, rw.hl
        is0, erra, lat, has_lat = rw.is0, rw.erra, rw.lat, rw.has_lat
        lo, hi = float(ts.min()), float(ts.max())
        self.first_ts = lo if self.first_ts is None else min(self.first_ts, lo)
        self.last_ts = hi if self.last_ts is None else max(self.last_ts, hi)

        # segment combinations: the page's code per row, a global id for the unit table
        combo = cols["segc"].to_numpy()
        gids = np.asarray([self.segments.combo_id(k) for k in local], dtype=np.int64)
        seg_of = [[self.segments.tally(item) for item in key] for key in local]
        nc = len(local)

        # per variant: requests, errors, status classes, latency
        rows_v = [int(is0.sum()), 0]
        rows_v[1] = n - rows_v[0]
        for v in (0, 1):
            m = va == v
            self.requests[v] += rows_v[v]
            self.errors[v] += int(np.count_nonzero(erra & m))
            # (a take: a random boolean mask indexes ~3x slower; the histogram: below)
            self.latency_moments[v].add_array(lat[np.flatnonzero(m & has_lat)])
        self._count_status_classes(va, rw.cls)

        # units: exposures now, outcome values through the request join below
        unit_col = cols["unit"]
        ex = pre.exposures
        if ex is not None:  # (the page's segment codes to this accumulator's)
            ex = {k: t.with_columns(pl.Series("combo", gids[t["combo"].to_numpy()]))
                  for k, t in ex.items()}  # fmt: skip
        self.units.add_reduced(ex, pre.metrics)

        # the request join: every outcome row of these requests (records sorted by fingerprint)
        labels = np.full(n, np.nan)
        row_of, mets, vals = pre.join
        if row_of.size:
            self.joined_by_request += int(row_of.size)
            lab_id = self.outcomes.metric_id(self.label_metric)
            if lab_id is not None:
                sel = mets == lab_id
                labels[row_of[sel]] = vals[sel]  # the last outcome row wins
            self._request_metrics(row_of, mets, vals, va, n, unit_col)
        elif self.request_metrics:
            self._request_metrics(
                np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), va, n, unit_col
            )

        # per segment: requests, errors, latency moments by variant
        cv = combo * 2 + va
        req = np.bincount(cv, minlength=2 * nc)
        errs = np.bincount(cv, weights=erra, minlength=2 * nc)
        lat0 = np.where(has_lat, lat, 0.0)
        ln = np.bincount(cv, weights=has_lat, minlength=2 * nc)
        lmean = np.bincount(cv, weights=lat0, minlength=2 * nc) / np.maximum(ln, 1.0)
        dev = np.where(has_lat, lat0 - lmean[cv], 0.0)
        lm2 = np.bincount(cv, weights=dev * dev, minlength=2 * nc)
        hist = np.bincount(
            cv[has_lat] * LAT_BINS + np.where(is0, rw.cbin, rw.hbin)[has_lat],
            minlength=2 * nc * LAT_BINS,
        ).reshape(nc, 2, LAT_BINS)
        per_variant = hist.sum(axis=0)  # (the same bins summed over the segment combinations)
        for v in (0, 1):
            self.latency[v].counts += per_variant[v]
        for k, aggs in enumerate(seg_of):
            for agg in aggs:
                for v in (0, 1):
                    j = 2 * k + v
                    agg.latency_hist[v].counts += hist[k, v]
                    agg.requests[v] += int(req[j])
                    agg.errors[v] += int(errs[j])
                    agg.latency[v].merge(Moments(float(ln[j]), float(lmean[j]), float(lm2[j])))

        # predictions of working responses (None on errors)
        cp, hp, cpf, hpf = pre.preds.cp, pre.preds.hp, pre.preds.cpf, pre.preds.hpf

        if self.kind == "score" and cpf is not None and hpf is not None:
            t = self.thresholds[0] if self.thresholds else 0.5
            self.cbpe[0].add(cpf, labels, t)
            self.cbpe[1].add(hpf, labels, t)

        # positive-decision rates per segment (disparity)
        for i, (ps, pf) in enumerate(((cp, cpf), (hp, hpf))):
            has, pos = self._positives(ps, pf)
            if has is None or pos is None:
                continue
            npred = np.bincount(combo[has], minlength=nc)
            npos = np.bincount(combo[np.flatnonzero(pos)], minlength=nc)
            for k, aggs in enumerate(seg_of):
                for agg in aggs:
                    agg.predictions[i] += int(npred[k])
                    agg.positives[i] += int(npos[k])

        if self.track_fields:
            self.fields.add_json(cols["fields"])
        pair = (cols["mirrored"] & cols["c_in"] & cols["h_in"]).to_numpy()
        if pair.any():
            pr = np.nonzero(pair)[0]
            self.paired.add(cols, pr, h, cl, hl, ce, he, labels, cp, hp, cpf, hpf, combo, seg_of,
                            bins=(rw.cbin, rw.hbin))  # fmt: skip
        rin = (cols["r_in"] & cols["c_in"]).to_numpy()
        if rin.any():
            self._fold_noise(cols, np.nonzero(rin)[0], h, cl, ce, cp, cpf, combo, len(seg_of))

    def _count_status_classes(self, va: np.ndarray, cls: np.ndarray) -> None:
        """Status classes (``cls``: status // 100, -1 for none) per variant, in the order of
        (variant, class). A ``bincount`` when the classes are few and small (HTTP statuses: a
        sort of the page costs ~30x more), else a sort."""
        top = int(cls.max()) if cls.size else 0
        if 0 <= top < 1_000 and int(cls.min()) >= -1:
            width = top + 2
            counts = np.bincount(va * width + (cls + 1), minlength=2 * width)
            for code in np.nonzero(counts)[0].tolist():
                v, c = divmod(code, width)
                self.status_classes[v][f"{c - 1}xx" if c > 0 else "none"] += int(counts[code])
            return
        cls_codes, cls_counts = np.unique(va * 100_000 + cls, return_counts=True)
        for code, cnt in zip(cls_codes.tolist(), cls_counts.tolist(), strict=True):
            v, c = divmod(code + 1, 100_000)
            self.status_classes[v][f"{c - 1}xx" if c > 0 else "none"] += cnt

    def _fold_noise(
        self,
        cols: pl.DataFrame,
        pr: np.ndarray,
        h: np.ndarray,
        cl: np.ndarray,
        ce: np.ndarray,
        cp: pl.Series,
        cpf: np.ndarray | None,
        combo: np.ndarray,
        nc: int,
    ) -> None:
        """Noise-floor pairs (the champion's answer and its repeat): the same aggregates as
        the mirrored pairs, kept apart, with their own contract diffs; not per segment and
        without labels (the quality of the champion against itself is not a question)."""
        re = cols["re"].to_numpy()
        rp = cols["rp"].set(pl.Series(re), None)
        rpf = rp.cast(pl.Float64, strict=False).to_numpy() if cpf is not None else None
        no_labels = np.full(cols.height, np.nan)
        self.noise.add(
            cols.select(contract=pl.col("contract_r")), pr, h, cl, cols["rl"].to_numpy(), ce,
            re, no_labels, cp, rp, cpf, rpf, combo, [[] for _ in range(nc)],
        )  # fmt: skip

    def _request_metrics(
        self,
        row_of: np.ndarray,
        mets: np.ndarray,
        vals: np.ndarray,
        va: np.ndarray,
        n: int,
        unit_col: pl.Series,
    ) -> None:
        """Per-request metrics: each request's outcome values of the metric reduced to one. A
        request with a unit adds its value to the unit's sums (the clusters of the ratio
        metric); one without a unit is a cluster of its own, kept in moments per variant."""
        no_unit = unit_col.is_null().to_numpy()
        for m in self.request_metrics:
            spec = self.specs[m][0]
            mom = self.request_metric_moments[m]
            mid = self.outcomes.metric_id(m)
            sel = mets == mid if mid is not None else np.zeros(mets.size, dtype=bool)
            has = np.zeros(n, dtype=bool)
            if sel.any():
                r, x = row_of[sel], vals[sel]
                cnt = np.bincount(r, minlength=n)
                has = cnt > 0
                if spec.reduce == "max":
                    agg = np.full(n, -np.inf)
                    np.maximum.at(agg, r, x)
                else:
                    agg = np.bincount(r, weights=x, minlength=n)
                    if spec.reduce == "mean":
                        agg = agg / np.maximum(cnt, 1)
                with_unit = np.nonzero(has & ~no_unit)[0]
                if with_unit.size and mid is not None:
                    self.units.add_request_values(unit_col.gather(with_unit), mid,
                                                  agg[with_unit])  # fmt: skip
                for v in (0, 1):
                    mom[v].add_array(agg[has & no_unit & (va == v)])
            if spec.missing_as_zero:
                for v in (0, 1):
                    mom[v].add_zeros(int(np.count_nonzero(~has & no_unit & (va == v))))

    def _positives(
        self, preds: pl.Series, numeric: np.ndarray | None
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        if self.kind == "score" and self.thresholds and numeric is not None:
            has = np.isfinite(numeric)
            return has, has & (np.where(has, numeric, -np.inf) >= self.thresholds[0])
        if self.kind == "class" and self.positive_class is not None:
            has = preds.is_not_null().to_numpy()
            return has, (preds == self.positive_class).fill_null(False).to_numpy()
        return None, None

    # ---------------------------------------------------------------- combining
    def merge(self, o: Accumulator) -> None:
        """Fold another accumulator (disjoint records, same policy and outcomes) into this one."""
        for name in ("records", "duplicates", "conflicts", "outside_window", "joined_by_request"):
            setattr(self, name, getattr(self, name) + getattr(o, name))
        self.rejected.merge(o.rejected)
        self._skip_files(o.unreadable_examples, o.unreadable_files)
        for rid in o.conflict_examples:
            if rid not in self.conflict_examples:
                self.conflict_examples.append(rid)
        del self.conflict_examples[MAX_CONFLICT_EXAMPLES:]
        for exp_name, n in o.other_experiments.items():
            count_experiment(self.other_experiments, exp_name, n)
        if o.outside_span is not None:
            span = self.outside_span or o.outside_span
            self.outside_span = (min(span[0], o.outside_span[0]), max(span[1], o.outside_span[1]))
        if o.first_ts is not None:
            self.first_ts = o.first_ts if self.first_ts is None else min(self.first_ts, o.first_ts)
            self.last_ts = o.last_ts if self.last_ts is None else max(self.last_ts, o.last_ts or 0)
        self.seen_content.merge(o.seen_content)
        self.seen.merge(o.seen)
        for v in (0, 1):
            self.requests[v] += o.requests[v]
            self.errors[v] += o.errors[v]
            self.status_classes[v].update(o.status_classes[v])
            self.latency[v].merge(o.latency[v])
            self.latency_moments[v].merge(o.latency_moments[v])
            for m in self.request_metrics:
                self.request_metric_moments[m][v].merge(o.request_metric_moments[m][v])
        # segments under this accumulator's bound (see SegmentTable.merge)
        self.units.merge(o.units, self.segments.merge(o.segments))
        self.paired.merge(o.paired)
        self.noise.merge(o.noise)
        for v in (0, 1):
            self.cbpe[v].merge(o.cbpe[v])
        self.fields.merge(o.fields)
