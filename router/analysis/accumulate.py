"""Reduce captured records into mergeable aggregates (pure; no I/O).

:class:`Accumulator` consumes records (DESIGN.md schema v1) in any number of batches, joins the
outcomes of an :class:`~router.analysis.outcomes_index.OutcomeIndex`, and keeps only summaries:
counts, :class:`~router.analysis.sketches.Moments`, latency histograms, a bottom-k hash sample
of mirrored pairs, per-unit state for the live split, per-segment tallies. ``a.merge(b)`` of two
accumulators over disjoint records equals one accumulator over both (tested), so windows,
shards and processes can be analysed apart and combined. The report is computed from an
accumulator by :mod:`router.analysis.report`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from router.analysis.outcomes_index import OutcomeIndex
from router.analysis.policy import MetricSpec, Policy
from router.analysis.schema import Record, record_from_dict
from router.analysis.sketches import HashSample, LogHistogram, Moments

VARIANTS = ("champion", "challenger")
EPS = 1e-15


def is_error(side: dict[str, Any]) -> bool:
    status = side.get("status")
    return side.get("error") is not None or status is None or status >= 500


def class_key(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def as_float(v: Any) -> float | None:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)) and math.isfinite(v):
        return float(v)
    return None


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


def fine_bin(x: float) -> int:
    """Signed log bin (1% wide) of a real number, for mergeable drift histograms."""
    if abs(x) < 1e-9:
        return 0
    b = int(math.log(abs(x) / 1e-9) / math.log(1.01)) + 1
    return b if x > 0 else -b


def fine_bin_value(b: int) -> float:
    if b == 0:
        return 0.0
    v = 1e-9 * 1.01 ** (abs(b) - 0.5)
    return v if b > 0 else -v


@dataclass
class PairMoments:
    """Sums over mirrored pairs of numeric predictions x (champion) and y (challenger)."""

    n: float = 0.0
    sx: float = 0.0
    sy: float = 0.0
    sxx: float = 0.0
    syy: float = 0.0
    sxy: float = 0.0
    sabs: float = 0.0

    def add(self, x: float, y: float) -> None:
        self.n += 1
        self.sx += x
        self.sy += y
        self.sxx += x * x
        self.syy += y * y
        self.sxy += x * y
        self.sabs += abs(y - x)

    def merge(self, o: PairMoments) -> None:
        for k in ("n", "sx", "sy", "sxx", "syy", "sxy", "sabs"):
            setattr(self, k, getattr(self, k) + getattr(o, k))


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


@dataclass
class SegmentAgg:
    requests: list[int] = field(default_factory=lambda: [0, 0])
    errors: list[int] = field(default_factory=lambda: [0, 0])
    latency: list[Moments] = field(default_factory=lambda: [Moments(), Moments()])
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
            self.predictions[i] += o.predictions[i]
            self.positives[i] += o.positives[i]
            self.correct[i] += o.correct[i]


def infer_metric_specs(
    policy: Policy, outcomes: OutcomeIndex
) -> dict[str, tuple[MetricSpec, bool]]:
    """Declared specs, plus inferred ones for undeclared metrics (binary → proportion)."""
    out: dict[str, tuple[MetricSpec, bool]] = {
        name: (spec, False) for name, spec in policy.metrics.items()
    }
    for name, info in sorted(outcomes.metrics.items()):
        if name not in out:
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
        self.invalid = 0
        self.duplicates = 0
        self.outside_window = 0
        self.first_ts: float | None = None
        self.last_ts: float | None = None
        # request ids seen, as Python hashes (ints, 64-bit: a collision among 10^7 ids has odds
        # of about 10^-6; forked workers share the hash seed, so the values agree across them)
        self.seen: set[int] = set()

        self.requests = [0, 0]
        self.errors = [0, 0]
        self.status_classes: list[Counter[str]] = [Counter(), Counter()]
        self.latency = [LogHistogram(), LogHistogram()]
        self.latency_moments = [Moments(), Moments()]
        self.fallback_units = 0
        # unit -> [variant, first_ts, segment items, {metric: [sum, count, max, first_ts]}]
        self.units: dict[str, list[Any]] = {}
        self.units_both = 0
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
        self.vector_agree = 0
        self.vector_js = 0.0
        self.sample = HashSample(policy.divergence.sample_size, 2)
        self.quality = Quality()
        self.labelled_sample = HashSample(policy.divergence.sample_size, 3)

        self.segments: dict[tuple[str, str], SegmentAgg] = {}
        self.drift_numeric: dict[str, Counter[int]] = {}
        self.drift_categorical: dict[str, Counter[str]] = {}

    # ---------------------------------------------------------------- feeding
    def add(self, records: Iterable[Any]) -> None:
        """Fold a batch of records in. The per-record loop only validates, deduplicates, joins
        and gathers columns; all arithmetic is vectorised over the batch (feed ~10k at a time).
        """
        seen = self.seen
        units = self.units
        label_metric = self.label_metric
        since, until, exp = self.since, self.until, self.experiment
        want_request_metrics = bool(self.request_metrics)
        combos: dict[tuple[Any, ...], int] = {}
        rows: list[tuple[Any, ...]] = []
        prow: list[tuple[Any, ...]] = []
        hashes: list[int] = []
        ustates: list[list[Any] | None] = []
        want_fields = self.track_fields
        out_rows: list[tuple[int, list[tuple[str, float, float]]]] = []
        fields_cols: dict[str, list[Any]] = {}
        contracts: list[dict[str, Any]] = []
        invalid = dup = outside = joined = 0
        windowed = since is not None or until is not None
        for r in records:
            if type(r) is not Record:
                r = record_from_dict(r)
                if r is None:
                    invalid += 1
                    continue
            rid = r.request_id
            ts = r.ts
            served = r.served
            if served == "champion":
                v = 0
            elif served == "challenger":
                v = 1
            else:
                invalid += 1
                continue
            if windowed and (
                (since is not None and ts < since) or (until is not None and ts > until)
            ):
                outside += 1
                continue
            rexp = r.experiment
            if rexp is not None and exp and rexp != exp:
                outside += 1
                continue
            hrid = hash(rid)
            if hrid in seen:
                dup += 1
                continue
            c = r.champion
            h = r.challenger
            side = c if v == 0 else h
            if side is None:
                invalid += 1
                continue
            if c is not None:
                cs = c.status
                ce = c.error is not None or cs is None or cs >= 500
                cp = None if ce else c.prediction
            else:
                ce, cp = True, None
            if h is not None:
                hs = h.status
                he = h.error is not None or hs is None or hs >= 500
                hp = None if he else h.prediction
            else:
                he, hp = True, None
            seg = r.segment
            key = tuple(seg.items()) if seg else ()
            ci = combos.get(key)
            if ci is None:
                ci = combos[key] = len(combos)
            seen.add(hrid)
            unit = r.unit
            us = None
            if unit is not None:
                us = units.get(unit)
                if us is None:
                    us = units[unit] = [v, ts, key, None]
                else:
                    if us[0] != v and us[0] != 2:
                        us[0] = 2  # seen in both variants: excluded from uplift, counted
                        self.units_both += 1
                    if ts < us[1]:
                        us[1], us[2] = ts, key
            rows.append((v, side.latency_ms, ce if v == 0 else he, side.status, ci, cp, hp, ts))
            hashes.append(hrid)
            ustates.append(us)
            if want_fields:
                fields = r.fields
                if fields:
                    for fname, x in fields.items():
                        col = fields_cols.get(fname)
                        if col is None:
                            col = fields_cols[fname] = []
                        col.append(x)
            if r.mirrored and c is not None and h is not None:
                prow.append((len(rows) - 1, c.latency_ms, h.latency_ms, ce, he, rid))
                if not (ce or he) and r.contract:
                    contracts.append(r.contract)
        self.invalid += invalid
        self.duplicates += dup
        self.outside_window += outside
        n = len(rows)
        if not n:
            return
        self.records += n
        V, LAT, ERR, STATUS, COMBO, CPRED, HPRED, TS = (
            list(col) for col in zip(*rows, strict=True)
        )
        # join the outcomes of these requests (sorted arrays; Python only for the hits)
        labels: list[Any] = [None] * n
        left, right = self.outcomes.lookup(np.fromiter(hashes, dtype=np.int64, count=n))
        hits = np.nonzero(right > left)[0]
        if hits.size:
            _h, o_met, o_val = self.outcomes.rows
            names = self.outcomes.metric_names
            counts = (right - left)[hits]
            # every hit's outcome rows with one gather: starts repeated, plus 0..count-1
            starts = np.repeat(left[hits], counts)
            offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
            idx = starts + offsets
            mets = o_met[idx].tolist()
            vals = o_val[idx].tolist()
            k = 0
            for i, cnt in zip(hits.tolist(), counts.tolist(), strict=True):
                us = ustates[i]
                ts = TS[i]
                outs = [(names[mets[j]], vals[j], ts) for j in range(k, k + cnt)]
                k += cnt
                for metric, value, _t in outs:
                    if metric == label_metric:
                        labels[i] = value
                    if us is not None:
                        _unit_metric(us, metric, value, ts)
                if want_request_metrics:
                    out_rows.append((V[i], outs))
            joined += k
        self.joined_by_request += joined
        lo, hi = min(TS), max(TS)
        self.first_ts = lo if self.first_ts is None else min(self.first_ts, lo)
        self.last_ts = hi if self.last_ts is None else max(self.last_ts, hi)
        seg_of = [[self._segment(item) for item in key] for key in combos]
        nc = len(combos)
        va = np.asarray(V, dtype=np.int64)
        erra = np.asarray(ERR, dtype=bool)
        lat = _floats(LAT)
        combo = np.asarray(COMBO, dtype=np.int64)
        rows_v = [int(np.count_nonzero(va == 0)), 0]
        rows_v[1] = n - rows_v[0]
        has_lat = np.isfinite(lat)
        for v in (0, 1):
            m = va == v
            self.requests[v] += rows_v[v]
            self.errors[v] += int(np.count_nonzero(erra & m))
            lv = lat[m & has_lat]
            self.latency[v].add_array(lv)
            self.latency_moments[v].add_array(lv)
        for (v, status), cnt in Counter(zip(V, STATUS, strict=False)).items():
            cls = f"{status // 100}xx" if isinstance(status, int) else "none"
            self.status_classes[v][cls] += cnt
        self._request_metrics(out_rows, rows_v)

        # per segment: requests, errors, latency moments by variant
        cv = combo * 2 + va
        req = np.bincount(cv, minlength=2 * nc)
        errs = np.bincount(cv, weights=erra, minlength=2 * nc)
        lat0 = np.where(has_lat, lat, 0.0)
        ln = np.bincount(cv, weights=has_lat, minlength=2 * nc)
        ls = np.bincount(cv, weights=lat0, minlength=2 * nc)
        lss = np.bincount(cv, weights=lat0 * lat0, minlength=2 * nc)
        for k, aggs in enumerate(seg_of):
            for agg in aggs:
                for v in (0, 1):
                    j = 2 * k + v
                    agg.requests[v] += int(req[j])
                    agg.errors[v] += int(errs[j])
                    mo = agg.latency[v]
                    mo.n += float(ln[j])
                    mo.s += float(ls[j])
                    mo.ss += float(lss[j])

        # positive-decision rates per segment (disparity)
        for i, preds in ((0, CPRED), (1, HPRED)):
            has, pos = self._positives(preds)
            if has is None or pos is None:
                continue
            npred = np.bincount(combo[has], minlength=nc)
            npos = np.bincount(combo[pos], minlength=nc)
            for k, aggs in enumerate(seg_of):
                for agg in aggs:
                    agg.predictions[i] += int(npred[k])
                    agg.positives[i] += int(npos[k])

        if fields_cols:
            self._add_fields(fields_cols)
        if prow:
            P_ROW, P_CL, P_HL, P_CE, P_HE, P_RID = (list(col) for col in zip(*prow, strict=True))
            P_LABEL = [labels[i] for i in P_ROW]
            self._add_pairs(
                P_ROW,
                P_CL,
                P_HL,
                P_CE,
                P_HE,
                P_RID,
                P_LABEL,
                CPRED,
                HPRED,
                combo,
                seg_of,
                contracts,
            )

    def _segment(self, item: tuple[str, Any]) -> SegmentAgg:
        agg = self.segments.get(item)
        if agg is None:
            agg = self.segments[item] = SegmentAgg()
        return agg

    def _request_metrics(
        self, out_rows: list[tuple[int, list[tuple[str, float, float]]]], rows_v: list[int]
    ) -> None:
        for m in self.request_metrics:
            spec = self.specs[m][0]
            with_val = [0, 0]
            mom = self.request_metric_moments[m]
            for v, outs in out_rows:
                vals = [val for (mm, val, _t) in outs if mm == m]
                if not vals:
                    continue
                x = max(vals) if spec.reduce == "max" else sum(vals)
                if spec.reduce == "mean":
                    x /= len(vals)
                mom[v].add(x)
                with_val[v] += 1
            if spec.missing_as_zero:
                for v in (0, 1):
                    mom[v].n += rows_v[v] - with_val[v]

    def _positives(self, preds: list[Any]) -> tuple[np.ndarray | None, np.ndarray | None]:
        if self.kind == "score" and self.thresholds:
            x = _floats(preds)
            has = np.isfinite(x)
            return has, has & (np.where(has, x, -np.inf) >= self.thresholds[0])
        if self.kind == "class" and self.positive_class is not None:
            pc = self.positive_class
            has = np.fromiter((p is not None for p in preds), bool, len(preds))
            pos = np.fromiter(
                (p is not None and class_key(p) == pc for p in preds), bool, len(preds)
            )
            return has, pos
        return None, None

    def _add_pairs(
        self,
        rows: list[int],
        cl: list[Any],
        hl: list[Any],
        ce: list[bool],
        he: list[bool],
        rids: list[str],
        labels: list[Any],
        cpred: list[Any],
        hpred: list[Any],
        combo: np.ndarray,
        seg_of: list[list[SegmentAgg]],
        contracts: list[dict[str, Any]],
    ) -> None:
        self.pairs += len(rows)
        a, b = _floats(cl), _floats(hl)
        both = np.isfinite(a) & np.isfinite(b)
        self.pair_latency[0].add_array(a[both])
        self.pair_latency[1].add_array(b[both])
        self.pair_latency_diff.add_array(b[both] - a[both])
        cea, hea = np.asarray(ce, dtype=bool), np.asarray(he, dtype=bool)
        for i in (0, 1):
            for j in (0, 1):
                self.pair_errors[i, j] += int(np.count_nonzero((cea == bool(i)) & (hea == bool(j))))
        ok = ~cea & ~hea
        self.comparable += int(np.count_nonzero(ok))
        for ct in contracts:
            for change in ("missing", "extra", "retyped"):
                for path in ct.get(change) or ():
                    self.contract[(change, path)] += 1
        pr = np.asarray(rows, dtype=np.int64)
        pcombo = combo[pr]
        if self.kind in ("class", "vector"):
            for idx in np.nonzero(ok)[0].tolist():
                row = rows[idx]
                self._add_pair_slow(
                    rids[idx], cpred[row], hpred[row], labels[idx], seg_of[int(pcombo[idx])]
                )
            return
        x_all = _floats([cpred[r] for r in rows])
        y_all = _floats([hpred[r] for r in rows])
        valid = ok & np.isfinite(x_all) & np.isfinite(y_all)
        x, y = x_all[valid], y_all[valid]
        if not x.size:
            return
        pm = self.pair_moments
        pm.n += float(x.size)
        pm.sx += float(x.sum())
        pm.sy += float(y.sum())
        pm.sxx += float(np.dot(x, x))
        pm.syy += float(np.dot(y, y))
        pm.sxy += float(np.dot(x, y))
        absd = np.abs(y - x)
        pm.sabs += float(absd.sum())
        for i, t in enumerate(self.thresholds):
            self.flips[i] += int(np.count_nonzero((x >= t) != (y >= t)))
        vidx = np.nonzero(valid)[0]
        self.sample.add_batch([rids[i] for i in vidx.tolist()], np.column_stack([x, y]))
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

        lab_all = _floats(labels)[valid]
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
            self.labelled_sample.add_batch(
                [rids[i] for i in hidx.tolist()], np.column_stack([ylf, x, y])
            )
        else:  # value: squared and absolute errors against the label
            e0, e1 = (x - lab) ** 2, (y - lab) ** 2
            q.loss[0] += float(e0.sum())
            q.loss[1] += float(e1.sum())
            q.brier[0] += float(np.abs(x - lab).sum())
            q.brier[1] += float(np.abs(y - lab).sum())
            q.loss_diff.add_array(e1 - e0)
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
        self, rid: str, cp: Any, hp: Any, label: float | None, segs: list[SegmentAgg]
    ) -> None:
        """Class and vector predictions (not vectorised)."""
        q = self.quality
        if self.kind == "class":
            if cp is None or hp is None:
                return
            a, b = class_key(cp), class_key(hp)
            self.confusion[(a, b)] += 1
            for agg in segs:
                agg.pairs += 1
                agg.agree += a == b
            if label is not None:
                lk = class_key(label)
                self._count_quality(int(a == lk), int(b == lk), segs)
            return
        p, r = as_vector(cp), as_vector(hp)
        if p is None or r is None or len(p) != len(r):
            return
        ia, ib = int(np.argmax(p)), int(np.argmax(r))
        self.vector_agree += ia == ib
        self.vector_js += js_distance(p, r)
        self.pair_moments.n += 1
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
            "invalid",
            "duplicates",
            "outside_window",
            "pairs",
            "comparable",
            "joined_by_request",
            "vector_agree",
            "vector_js",
        ):
            setattr(self, name, getattr(self, name) + getattr(o, name))
        if o.first_ts is not None:
            self.first_ts = o.first_ts if self.first_ts is None else min(self.first_ts, o.first_ts)
            self.last_ts = o.last_ts if self.last_ts is None else max(self.last_ts, o.last_ts or 0)
        self.seen |= o.seen
        for v in (0, 1):
            self.requests[v] += o.requests[v]
            self.errors[v] += o.errors[v]
            self.status_classes[v].update(o.status_classes[v])
            self.latency[v].merge(o.latency[v])
            self.latency_moments[v].merge(o.latency_moments[v])
            self.pair_latency[v].merge(o.pair_latency[v])
            for m in self.request_metrics:
                self.request_metric_moments[m][v].merge(o.request_metric_moments[m][v])
        for unit, st in o.units.items():
            mine = self.units.get(unit)
            if mine is None:
                self.units[unit] = [st[0], st[1], st[2], dict(st[3]) if st[3] else None]
                continue
            if mine[0] != st[0] and mine[0] != 2:
                mine[0] = 2
            if st[1] < mine[1]:
                mine[1], mine[2] = st[1], st[2]
            for metric, (s, n, mx, ft) in (st[3] or {}).items():
                vals = mine[3] if mine[3] is not None else {}
                mine[3] = vals
                cur = vals.get(metric)
                vals[metric] = (
                    [s, n, mx, ft]
                    if cur is None
                    else [cur[0] + s, cur[1] + n, max(cur[2], mx), min(cur[3], ft)]
                )
        self.units_both = sum(1 for st in self.units.values() if st[0] == 2)
        self.pair_latency_diff.merge(o.pair_latency_diff)
        self.pair_errors += o.pair_errors
        self.contract.update(o.contract)
        self.pair_moments.merge(o.pair_moments)
        self.flips = [a + b for a, b in zip(self.flips, o.flips, strict=True)]
        self.confusion.update(o.confusion)
        self.sample.merge(o.sample)
        self.quality.merge(o.quality)
        self.labelled_sample.merge(o.labelled_sample)
        for key, agg in o.segments.items():
            self.segments.setdefault(key, SegmentAgg()).merge(agg)
        for name, c in o.drift_numeric.items():
            self.drift_numeric.setdefault(name, Counter()).update(c)
        for name, cc in o.drift_categorical.items():
            self.drift_categorical.setdefault(name, Counter()).update(cc)


def _unit_metric(ustate: list[Any], metric: str, value: float, ts: float) -> None:
    vals = ustate[3]
    if vals is None:
        vals = ustate[3] = {}
    cur = vals.get(metric)
    if cur is None:
        vals[metric] = [value, 1, value, ts]
    else:
        cur[0] += value
        cur[1] += 1
        if value > cur[2]:
            cur[2] = value


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
