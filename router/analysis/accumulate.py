"""Reduce captured records into mergeable aggregates (pure; no I/O).

:class:`Accumulator` consumes pages of records (DESIGN.md schema v1, decoded into columns by
:mod:`router.analysis.frames`), joins the outcomes of an
:class:`~router.analysis.outcomes_index.OutcomeIndex`, and keeps only summaries:
counts, :class:`~router.analysis.sketches.Moments` (Welford: centred, so merges are exact and
nothing cancels), latency histograms, a bottom-k hash sample
of mirrored pairs, per-unit state for the live split, per-segment tallies. ``a.merge(b)`` of two
accumulators over disjoint records equals one accumulator over both (tested), so windows,
shards and processes can be analysed apart and combined. The report is computed from an
accumulator by :mod:`router.analysis.report`.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import polars as pl

from router.analysis.frames import (
    RECORD_SCHEMA,
    Invalid,
    Page,
    prepare_records,
    records_chunk,
)
from router.analysis.outcomes_index import OutcomeIndex, count_experiment
from router.analysis.policy import MetricSpec, Policy
from router.analysis.sketches import (
    LAT_BINS,
    CoMoments,
    HashSample,
    IdSet,
    LazyIdSet,
    LogHistogram,
    Moments,
    lat_bin,
)
from router.analysis.units import UnitTable

VARIANTS = ("champion", "challenger")
EPS = 1e-15
OTHER = "other"  # the segment value (and field) that values beyond the tracked ones fold into
MAX_COMBOS = 20_000  # distinct segment combinations; beyond, a new one folds into all-"other"
SEG_CACHE = 4_096  # segment JSON texts remembered between pages
MAX_CONFLICT_EXAMPLES = 5


def class_key(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def as_vector(v: Any) -> list[float] | None:
    if isinstance(v, list) and v and all(isinstance(x, (int, float)) for x in v):
        return [float(x) for x in v]
    return None


def js_distance(p: list[float], q: list[float]) -> float:
    """Jensen-Shannon distance (natural log), as ``scipy.spatial.distance.jensenshannon``."""
    sp, sq = sum(p), sum(q)
    if sp <= 0 or sq <= 0 or len(p) != len(q):
        return 0.0
    total = 0.0
    for a, b in zip(p, q, strict=True):
        a, b = a / sp, b / sq
        m = (a + b) / 2
        if a > 0:
            total += a * math.log(a / m)
        if b > 0:
            total += b * math.log(b / m)
    return math.sqrt(max(total / 2, 0.0))


def fine_bin_value(b: int) -> float:
    """The middle of signed log bin ``b`` (1% wide) of the drift histograms (values are binned,
    vectorised, in :meth:`Accumulator._add_fields`)."""
    if b == 0:
        return 0.0
    v = 1e-9 * 1.01 ** (abs(b) - 0.5)
    return v if b > 0 else -v


@dataclass
class PairMoments:
    """Mirrored pairs of numeric predictions x (champion) and y (challenger): their co-moments
    (Pearson's r), the moments of the difference ``d = y − x`` (RMSE, mean signed difference,
    from centred sums: exact when the predictions are near 1e8 and differ by 0.5) and the sum
    of ``|d|``."""

    co: CoMoments = field(default_factory=CoMoments)
    diff: Moments = field(default_factory=Moments)
    sabs: float = 0.0

    @property
    def n(self) -> float:
        return self.co.n

    def merge(self, o: PairMoments) -> None:
        self.co.merge(o.co)
        self.diff.merge(o.diff)
        self.sabs += o.sabs


@dataclass
class Quality:
    """Label-joined quality of both models on the same mirrored requests."""

    n: int = 0
    correct: list[int] = field(default_factory=lambda: [0, 0])
    b: int = 0  # champion right, challenger wrong
    c: int = 0  # challenger right, champion wrong
    loss: list[float] = field(default_factory=lambda: [0.0, 0.0])  # log loss, or squared error
    brier: list[float] = field(default_factory=lambda: [0.0, 0.0])  # brier, or absolute error
    loss_diff: Moments = field(default_factory=Moments)  # challenger - champion, per request
    with_loss: int = 0
    # value predictions: (champion squared error, challenger squared error) per labelled pair,
    # for the delta-method interval of the ratio of mean squared errors (the RMSE gate)
    sq_err: CoMoments = field(default_factory=CoMoments)

    def merge(self, o: Quality) -> None:
        self.n += o.n
        self.b += o.b
        self.c += o.c
        self.with_loss += o.with_loss
        for i in (0, 1):
            self.correct[i] += o.correct[i]
            self.loss[i] += o.loss[i]
            self.brier[i] += o.brier[i]
        self.loss_diff.merge(o.loss_diff)
        self.sq_err.merge(o.sq_err)


@dataclass
class SegmentAgg:
    requests: list[int] = field(default_factory=lambda: [0, 0])
    errors: list[int] = field(default_factory=lambda: [0, 0])
    latency: list[Moments] = field(default_factory=lambda: [Moments(), Moments()])
    latency_hist: list[LogHistogram] = field(
        default_factory=lambda: [LogHistogram(), LogHistogram()]
    )
    pairs: int = 0
    agree: int = 0
    abs_diff: float = 0.0
    predictions: list[int] = field(default_factory=lambda: [0, 0])
    positives: list[int] = field(default_factory=lambda: [0, 0])
    labelled: int = 0
    correct: list[int] = field(default_factory=lambda: [0, 0])

    def merge(self, o: SegmentAgg) -> None:
        self.pairs += o.pairs
        self.agree += o.agree
        self.abs_diff += o.abs_diff
        self.labelled += o.labelled
        for i in (0, 1):
            self.requests[i] += o.requests[i]
            self.errors[i] += o.errors[i]
            self.latency[i].merge(o.latency[i])
            self.latency_hist[i].merge(o.latency_hist[i])
            self.predictions[i] += o.predictions[i]
            self.positives[i] += o.positives[i]
            self.correct[i] += o.correct[i]


def infer_metric_specs(
    policy: Policy, outcomes: OutcomeIndex
) -> dict[str, tuple[MetricSpec, bool]]:
    """Declared specs, plus inferred ones for undeclared metrics (binary → proportion). The label
    metric is the ground truth of the paired quality section, not a business metric of the live
    split: it is not inferred (counting it twice would also put it in the Holm family)."""
    out: dict[str, tuple[MetricSpec, bool]] = {
        name: (spec, False) for name, spec in policy.metrics.items()
    }
    for name, info in sorted(outcomes.metrics.items()):
        if name not in out and name != policy.label_metric:
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
        # about 10^-6), and fingerprints of (request id, ts, unit, variant) for conflicts
        self.seen = IdSet()
        self.seen_content = LazyIdSet()  # (queried only when a request id repeats)
        self.now = time.time()  # what "in the future" means for a record's ts

        self.requests = [0, 0]
        self.errors = [0, 0]
        self.status_classes: list[Counter[str]] = [Counter(), Counter()]
        self.latency = [LogHistogram(), LogHistogram()]
        self.latency_moments = [Moments(), Moments()]
        self.units = UnitTable()
        # segment combinations (tuples of (field, value) items), numbered for the unit table
        self.combo_ids: dict[tuple[Any, ...], int] = {}
        self.combo_keys: list[tuple[Any, ...]] = []
        self._seg_cache: dict[str, tuple[tuple[Any, ...], list[str]]] = {}
        # per-request metrics of requests without a unit: each request is its own cluster
        # (those with a unit are summed per unit in the unit table)
        self.request_metric_moments: dict[str, list[Moments]] = {
            m: [Moments(), Moments()] for m in self.request_metrics
        }
        self.joined_by_request = 0

        self.pairs = 0
        self.pair_latency = [LogHistogram(), LogHistogram()]
        self.pair_latency_diff = Moments()
        self.pair_errors = np.zeros((2, 2), dtype=np.int64)  # [champion err][challenger err]
        self.comparable = 0
        self.contract: Counter[tuple[str, str]] = Counter()
        self.pair_moments = PairMoments()
        self.flips = [0 for _ in self.thresholds]
        self.confusion: Counter[tuple[str, str]] = Counter()
        self.vector_pairs = 0
        self.vector_agree = 0
        self.vector_js = 0.0
        self.sample = HashSample(policy.divergence.sample_size, 2)
        self.quality = Quality()
        self.labelled_sample = HashSample(policy.divergence.sample_size, 3)

        self.segments: dict[tuple[str, str], SegmentAgg] = {}
        # the values tracked per segment field (bounded); the others fold into "other"
        self.max_tracked_values = policy.segments.max_tracked_values
        self.max_fields = policy.segments.max_fields
        self._tracked: dict[str, set[str]] = {}
        self.segment_overflow: Counter[str] = Counter()  # records folded, per field
        self.drift_numeric: dict[str, Counter[int]] = {}
        self.drift_categorical: dict[str, Counter[str]] = {}

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

    def add_page(self, page: Page) -> None:
        """Fold in a page of valid records (:func:`router.analysis.frames.prepare_records`).
        Everything is columnar: filters and dedupe as masks, the outcome join by binary
        search, aggregates by ``bincount`` per variant and segment; Python loops run per
        segment combination and per distinct contract break, not per record."""
        self.rejected.merge(page.rejected)
        cols = page.cols
        if not cols.height:
            return
        seg_keys, folded = self._segment_keys(page.segments)
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
        keep = self._dedupe(cols)
        if keep is not None:
            cols = cols.filter(keep)
        if not cols.height:
            return
        h = cols["h"].to_numpy()
        self.seen.add_new(h)
        self.seen_content.add_new(cols["k"].to_numpy())
        self.records += cols.height
        if folded:
            per_key = np.bincount(cols["segc"].to_numpy(), minlength=len(seg_keys))
            for code, fields in folded.items():
                for name in fields:
                    self.segment_overflow[name] += int(per_key[code])
        self._fold(cols, h, seg_keys)

    def _dedupe(self, cols: pl.DataFrame) -> np.ndarray | None:
        """The rows to keep (None: all): the first of each request id, within the page
        (sorted by fingerprint, so repeats are adjacent and the first stays first) and against
        every page before. A repeat with the same content (ts, unit, variant) is a duplicate (a
        replay); with other content, a conflict (a reused request id)."""
        h = cols["h"].to_numpy()
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

    def _segment_keys(
        self, segments: list[str]
    ) -> tuple[list[tuple[Any, ...]], dict[int, list[str]]]:
        """The items of each segment JSON of a page (valid: objects of strings), with () first
        (no segment), values beyond the tracked ones folded into "other"; and, per page code,
        the fields whose value was folded."""
        keys: list[tuple[Any, ...]] = [()]
        folded: dict[int, list[str]] = {}
        for code, text in enumerate(segments, 1):
            hit = self._seg_cache.get(text)
            if hit is None:
                d = orjson.loads(text)
                hit = self._cap(tuple(d.items()) if isinstance(d, dict) else ())
                if len(self._seg_cache) >= SEG_CACHE:
                    self._seg_cache.clear()
                self._seg_cache[text] = hit
            keys.append(hit[0])
            if hit[1]:
                folded[code] = hit[1]
        return keys, folded

    def _cap(self, items: tuple[Any, ...]) -> tuple[tuple[Any, ...], list[str]]:
        """A segment combination with untracked values (and fields) folded into "other",
        and the fields it folded; a combination beyond ``MAX_COMBOS`` folds whole."""
        key, folded = self._cap_items(items)
        if key not in self.combo_ids and len(self.combo_keys) >= MAX_COMBOS:
            folded += [n for n, v in key if v != OTHER]
            key = tuple(dict.fromkeys((n, OTHER) for n, _ in key))
        return key, folded

    def _cap_items(self, items: Iterable[tuple[str, str]]) -> tuple[tuple[Any, ...], list[str]]:
        """Values beyond ``max_tracked_values`` per field fold into "other" (and fields beyond
        ``max_fields`` into the field "other"), tracking new ones while there is room. A value
        once tracked stays tracked, one once folded stays folded, so cached keys stay right."""
        out: dict[tuple[str, str], None] = {}  # (ordered, without repeats)
        folded: list[str] = []
        for name, value in items:
            vals = self._tracked.get(name)
            if vals is None:
                if len(self._tracked) >= self.max_fields:
                    folded.append(name)
                    name, value = OTHER, OTHER
                    vals = self._tracked.setdefault(OTHER, {OTHER})
                else:
                    vals = self._tracked[name] = set()
            if value not in vals:
                if len(vals) < self.max_tracked_values:
                    vals.add(value)
                else:
                    folded.append(name)
                    value = OTHER
            out[(name, value)] = None
        return tuple(out), folded

    def _fold(self, cols: pl.DataFrame, h: np.ndarray, local: list[tuple[Any, ...]]) -> None:
        n = cols.height
        va = cols["v"].to_numpy().astype(np.int64)
        ts = cols["ts"].to_numpy()
        ce, he = cols["ce"].to_numpy(), cols["he"].to_numpy()
        cl, hl = cols["cl"].to_numpy(), cols["hl"].to_numpy()
        is0 = va == 0
        erra = np.where(is0, ce, he)
        lat = np.where(is0, cl, hl)
        lo, hi = float(ts.min()), float(ts.max())
        self.first_ts = lo if self.first_ts is None else min(self.first_ts, lo)
        self.last_ts = hi if self.last_ts is None else max(self.last_ts, hi)

        # segment combinations: the page's code per row, a global id for the unit table
        combo = cols["segc"].to_numpy()
        gids = np.asarray([self._combo_id(k) for k in local], dtype=np.int64)
        seg_of = [[self._segment(item) for item in key] for key in local]
        nc = len(local)

        # per variant: requests, errors, status classes, latency
        rows_v = [int(is0.sum()), 0]
        rows_v[1] = n - rows_v[0]
        has_lat = np.isfinite(lat)
        for v in (0, 1):
            m = va == v
            self.requests[v] += rows_v[v]
            self.errors[v] += int(np.count_nonzero(erra & m))
            lv = lat[m & has_lat]
            self.latency[v].add_array(lv)
            self.latency_moments[v].add_array(lv)
        status = np.where(
            is0, cols["cs"].fill_null(-1).to_numpy(), cols["hs"].fill_null(-1).to_numpy()
        )
        cls_codes, cls_counts = np.unique(va * 100_000 + np.where(status >= 0, status // 100, -1),
                                          return_counts=True)  # fmt: skip
        for code, cnt in zip(cls_codes.tolist(), cls_counts.tolist(), strict=True):
            v, c = divmod(code + 1, 100_000)
            self.status_classes[v][f"{c - 1}xx" if c > 0 else "none"] += cnt

        # units: exposures now, outcome values through the request join below
        unit_col = cols["unit"]
        if unit_col.null_count() < n:
            self.units.add_exposures(unit_col, va, ts, gids[combo])

        # the request join: every outcome row of these requests, by binary search
        labels = np.full(n, np.nan)
        left, right = self.outcomes.lookup(h, presorted=True)
        cnt = right - left
        hits = np.nonzero(cnt)[0]
        if hits.size:
            _h, o_met, o_val = self.outcomes.rows
            counts = cnt[hits]
            starts = np.repeat(left[hits], counts)
            idx = starts + np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
            row_of = np.repeat(hits, counts)
            mets = o_met[idx].astype(np.int64)
            vals = o_val[idx]
            self.joined_by_request += int(idx.size)
            lab_id = self.outcomes.metric_id(self.label_metric)
            if lab_id is not None:
                sel = mets == lab_id
                labels[row_of[sel]] = vals[sel]  # the last outcome row wins
            if unit_col.null_count() < n:
                self.units.add_metrics(unit_col.gather(row_of), mets, vals)
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
            cv[has_lat] * LAT_BINS + lat_bin(lat[has_lat]), minlength=2 * nc * LAT_BINS
        ).reshape(nc, 2, LAT_BINS)
        for k, aggs in enumerate(seg_of):
            for agg in aggs:
                for v in (0, 1):
                    j = 2 * k + v
                    agg.latency_hist[v].counts += hist[k, v]
                    agg.requests[v] += int(req[j])
                    agg.errors[v] += int(errs[j])
                    agg.latency[v].merge(Moments(float(ln[j]), float(lmean[j]), float(lm2[j])))

        # predictions of working responses (None on errors)
        cp = cols["cp"].set(pl.Series(ce), None)
        hp = cols["hp"].set(pl.Series(he), None)
        numeric = self.kind in ("score", "value")
        cpf = cp.cast(pl.Float64, strict=False).to_numpy() if numeric else None
        hpf = hp.cast(pl.Float64, strict=False).to_numpy() if numeric else None

        # positive-decision rates per segment (disparity)
        for i, (ps, pf) in enumerate(((cp, cpf), (hp, hpf))):
            has, pos = self._positives(ps, pf)
            if has is None or pos is None:
                continue
            npred = np.bincount(combo[has], minlength=nc)
            npos = np.bincount(combo[pos], minlength=nc)
            for k, aggs in enumerate(seg_of):
                for agg in aggs:
                    agg.predictions[i] += int(npred[k])
                    agg.positives[i] += int(npos[k])

        if self.track_fields:
            self._add_fields_json(cols["fields"])
        pair = (cols["mirrored"] & cols["c_in"] & cols["h_in"]).to_numpy()
        if pair.any():
            pr = np.nonzero(pair)[0]
            self._add_pairs(cols, pr, h, cl, hl, ce, he, labels, cp, hp, cpf, hpf, combo, seg_of)

    def _combo_id(self, key: tuple[Any, ...]) -> int:
        gid = self.combo_ids.get(key)
        if gid is None:
            gid = self.combo_ids[key] = len(self.combo_keys)
            self.combo_keys.append(key)
        return gid

    def _segment(self, item: tuple[str, Any]) -> SegmentAgg:
        agg = self.segments.get(item)
        if agg is None:
            agg = self.segments[item] = SegmentAgg()
        return agg

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

    def _add_pairs(
        self,
        cols: pl.DataFrame,
        pr: np.ndarray,
        h: np.ndarray,
        cl: np.ndarray,
        hl: np.ndarray,
        ce: np.ndarray,
        he: np.ndarray,
        labels_all: np.ndarray,
        cp: pl.Series,
        hp: pl.Series,
        cpf: np.ndarray | None,
        hpf: np.ndarray | None,
        combo: np.ndarray,
        seg_of: list[list[SegmentAgg]],
    ) -> None:
        """Mirrored pairs (rows ``pr`` of the page): paired latency and errors, the response
        contract, divergence, label-joined quality, per segment."""
        self.pairs += int(pr.size)
        a, b = cl[pr], hl[pr]
        both = np.isfinite(a) & np.isfinite(b)
        self.pair_latency[0].add_array(a[both])
        self.pair_latency[1].add_array(b[both])
        self.pair_latency_diff.add_array(b[both] - a[both])
        cea, hea = ce[pr], he[pr]
        for i in (0, 1):
            for j in (0, 1):
                self.pair_errors[i, j] += int(np.count_nonzero((cea == bool(i)) & (hea == bool(j))))
        ok = ~cea & ~hea
        self.comparable += int(np.count_nonzero(ok))
        for text in cols["contract"].gather(pr[ok]).drop_nulls().to_list():
            ct = orjson.loads(text)
            if not isinstance(ct, dict):
                continue
            for change in ("missing", "extra", "retyped"):
                paths = ct.get(change)
                if isinstance(paths, list):
                    for path in paths:
                        self.contract[(change, str(path))] += 1
        pcombo = combo[pr]
        labels = labels_all[pr]
        if self.kind in ("class", "vector") or cpf is None or hpf is None:
            cps, hps = cp.gather(pr).to_list(), hp.gather(pr).to_list()
            for idx in np.nonzero(ok)[0].tolist():
                lab = labels[idx]
                self._add_pair_slow(
                    cps[idx], hps[idx], None if math.isnan(lab) else float(lab),
                    seg_of[int(pcombo[idx])],
                )  # fmt: skip
            return
        ph = h[pr]
        x_all, y_all = cpf[pr], hpf[pr]
        valid = ok & np.isfinite(x_all) & np.isfinite(y_all)
        x, y = x_all[valid], y_all[valid]
        if not x.size:
            return
        pm = self.pair_moments
        # element-wise products summed, not np.dot: a BLAS dot wakes OpenBLAS's threads, which
        # then spin for a while; measured at ~3 CPU-seconds per million records on 2 cores
        pm.co.add_arrays(x, y)
        d = y - x
        pm.diff.add_array(d)
        absd = np.abs(d)
        pm.sabs += float(absd.sum())
        for i, t in enumerate(self.thresholds):
            self.flips[i] += int(np.count_nonzero((x >= t) != (y >= t)))
        vidx = np.nonzero(valid)[0]
        self.sample.add_batch(ph[vidx], np.column_stack([x, y]))
        nc = len(seg_of)
        sc = pcombo[valid]
        npairs = np.bincount(sc, minlength=nc)
        sabs = np.bincount(sc, weights=absd, minlength=nc)
        if self.kind == "score" and self.thresholds:
            t0 = self.thresholds[0]
            agree: np.ndarray = np.bincount(sc, weights=(x >= t0) == (y >= t0), minlength=nc)
        else:
            agree = np.zeros(nc)
        for k, aggs in enumerate(seg_of):
            for agg in aggs:
                agg.pairs += int(npairs[k])
                agg.abs_diff += float(sabs[k])
                agg.agree += int(agree[k])

        lab_all = labels[valid]
        has = np.isfinite(lab_all)
        if not has.any():
            return
        x, y, lab, sc = x[has], y[has], lab_all[has], sc[has]
        q = self.quality
        if self.kind == "score":
            yl = lab >= 0.5
            t = self.thresholds[0] if self.thresholds else 0.5
            r0 = (x >= t) == yl
            r1 = (y >= t) == yl
            ylf = yl.astype(float)
            inside = (x >= 0) & (x <= 1) & (y >= 0) & (y <= 1)
            l0 = _logloss_arr(x[inside], ylf[inside])
            l1 = _logloss_arr(y[inside], ylf[inside])
            q.loss[0] += float(l0.sum())
            q.loss[1] += float(l1.sum())
            q.loss_diff.add_array(l1 - l0)
            q.with_loss += int(l0.size)
            q.brier[0] += float(((x - ylf) ** 2).sum())
            q.brier[1] += float(((y - ylf) ** 2).sum())
            hidx = vidx[has]
            self.labelled_sample.add_batch(ph[hidx], np.column_stack([ylf, x, y]))
        else:  # value: squared and absolute errors against the label
            e0, e1 = (x - lab) ** 2, (y - lab) ** 2
            q.loss[0] += float(e0.sum())
            q.loss[1] += float(e1.sum())
            q.brier[0] += float(np.abs(x - lab).sum())
            q.brier[1] += float(np.abs(y - lab).sum())
            q.loss_diff.add_array(e1 - e0)
            q.sq_err.add_arrays(e0, e1)
            q.with_loss += int(e0.size)
            r0 = r1 = np.zeros(x.size, dtype=bool)
        q.n += int(x.size)
        q.correct[0] += int(np.count_nonzero(r0))
        q.correct[1] += int(np.count_nonzero(r1))
        q.b += int(np.count_nonzero(r0 & ~r1))
        q.c += int(np.count_nonzero(r1 & ~r0))
        nl = np.bincount(sc, minlength=nc)
        c0 = np.bincount(sc, weights=r0, minlength=nc)
        c1 = np.bincount(sc, weights=r1, minlength=nc)
        for k, aggs in enumerate(seg_of):
            for agg in aggs:
                agg.labelled += int(nl[k])
                agg.correct[0] += int(c0[k])
                agg.correct[1] += int(c1[k])

    def _add_pair_slow(
        self, cp: str | None, hp: str | None, label: float | None, segs: list[SegmentAgg]
    ) -> None:
        """Class and vector predictions (as JSON text; not vectorised)."""
        q = self.quality
        if cp is None or hp is None:
            return
        if self.kind == "class":
            a, b = cp, hp  # the JSON text of a class: "3" for 3 and 3.0, the string itself
            self.confusion[(a, b)] += 1
            for agg in segs:
                agg.pairs += 1
                agg.agree += a == b
            if label is not None:
                lk = class_key(label)
                self._count_quality(int(a == lk), int(b == lk), segs)
            return
        p, r = as_vector(_json(cp)), as_vector(_json(hp))
        if p is None or r is None or len(p) != len(r):
            return
        ia, ib = int(np.argmax(p)), int(np.argmax(r))
        self.vector_agree += ia == ib
        self.vector_js += js_distance(p, r)
        self.vector_pairs += 1
        for agg in segs:
            agg.pairs += 1
            agg.agree += ia == ib
        if label is not None:
            li = int(label)
            if 0 <= li < len(p):
                l0 = -math.log(min(max(p[li] / (sum(p) or 1.0), EPS), 1.0))
                l1 = -math.log(min(max(r[li] / (sum(r) or 1.0), EPS), 1.0))
                q.loss[0] += l0
                q.loss[1] += l1
                q.loss_diff.add(l1 - l0)
                q.with_loss += 1
            self._count_quality(int(ia == li), int(ib == li), segs)

    def _count_quality(self, r0: int, r1: int, segs: list[SegmentAgg]) -> None:
        q = self.quality
        q.n += 1
        q.correct[0] += r0
        q.correct[1] += r1
        q.b += r0 and not r1
        q.c += r1 and not r0
        for agg in segs:
            agg.labelled += 1
            agg.correct[0] += r0
            agg.correct[1] += r1

    def _add_fields_json(self, col: pl.Series) -> None:
        """Captured input fields (JSON objects) into the drift histograms."""
        cols: dict[str, list[Any]] = {}
        for text in col.drop_nulls().to_list():
            d = _json(text)
            if isinstance(d, dict):
                for name, x in d.items():
                    cols.setdefault(name, []).append(x)
        if cols:
            self._add_fields(cols)

    def _add_fields(self, cols: dict[str, list[Any]]) -> None:
        for name, values in cols.items():
            x = _floats(values)
            num = np.isfinite(x)
            if num.any():
                xs = x[num]
                tiny = np.abs(xs) < 1e-9
                mag = np.log(np.where(tiny, 1e-9, np.abs(xs)) / 1e-9) / math.log(1.01)
                bins = np.where(tiny, 0, (mag.astype(np.int64) + 1) * np.sign(xs).astype(np.int64))
                keys, counts = np.unique(bins, return_counts=True)
                c = self.drift_numeric.setdefault(name, Counter())
                for k, cnt in zip(keys.tolist(), counts.tolist(), strict=True):
                    c[k] += cnt
            strs = [v for v in values if isinstance(v, str)]
            if strs:
                self.drift_categorical.setdefault(name, Counter()).update(strs)

    # ---------------------------------------------------------------- combining
    def merge(self, o: Accumulator) -> None:
        """Fold another accumulator (disjoint records, same policy and outcomes) into this one."""
        for name in (
            "records",
            "duplicates",
            "conflicts",
            "outside_window",
            "pairs",
            "comparable",
            "joined_by_request",
            "vector_pairs",
            "vector_agree",
            "vector_js",
        ):
            setattr(self, name, getattr(self, name) + getattr(o, name))
        self.rejected.merge(o.rejected)
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
            self.pair_latency[v].merge(o.pair_latency[v])
            for m in self.request_metrics:
                self.request_metric_moments[m][v].merge(o.request_metric_moments[m][v])
        # segments under this accumulator's bound: the other's values fold into "other" here
        # too once this one tracks as many (exact while both stay under the bound)
        combo_map = np.asarray([self._combo_id(self._cap(k)[0]) for k in o.combo_keys],
                               dtype=np.int64)  # fmt: skip
        self.units.merge(o.units, combo_map)
        self.pair_latency_diff.merge(o.pair_latency_diff)
        self.pair_errors += o.pair_errors
        self.contract.update(o.contract)
        self.pair_moments.merge(o.pair_moments)
        self.flips = [a + b for a, b in zip(self.flips, o.flips, strict=True)]
        self.confusion.update(o.confusion)
        self.sample.merge(o.sample)
        self.quality.merge(o.quality)
        self.labelled_sample.merge(o.labelled_sample)
        self.segment_overflow.update(o.segment_overflow)
        for key, agg in o.segments.items():
            (item,), folded = self._cap_items([key])
            for name in folded:
                self.segment_overflow[name] += sum(agg.requests)
            self.segments.setdefault(item, SegmentAgg()).merge(agg)
        for name, c in o.drift_numeric.items():
            self.drift_numeric.setdefault(name, Counter()).update(c)
        for name, cc in o.drift_categorical.items():
            self.drift_categorical.setdefault(name, Counter()).update(cc)


def _json(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return None


def _floats(values: list[Any]) -> np.ndarray:
    """A float array of JSON values: numbers as they are, anything else NaN."""
    try:
        return np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        return np.fromiter(
            (float(v) if isinstance(v, (int, float)) else math.nan for v in values),
            float,
            len(values),
        )


def _logloss_arr(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPS, 1 - EPS)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))
