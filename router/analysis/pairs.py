"""Mirrored pairs (both models on the same request) reduced to mergeable aggregates (pure; no I/O).

:class:`PairAggregates` folds the mirrored rows of a page: paired latency and errors, the
response contract, prediction divergence (score and value predictions vectorised; class and
vector predictions pair by pair), and label-joined quality, each also per segment. It is one
part of an :class:`~router.analysis.accumulate.Accumulator`, and merges like it.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import polars as pl

from router.analysis.ndjson import json_or_none
from router.analysis.policy import Policy
from router.analysis.segments import SegmentAgg
from router.analysis.sketches import CoMoments, HashSample, LogHistogram, Moments
from router.analysis.text import TextAggregates, TextPair

EPS = 1e-15


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


class PairAggregates:
    """Everything the mirrored pairs of an analysis tell: feed a page's pair rows with
    :meth:`add`, combine with :meth:`merge`."""

    def __init__(self, policy: Policy, kind: str) -> None:
        self.kind = kind
        self.thresholds = list(policy.divergence.thresholds)
        self.pairs = 0
        self.latency = [LogHistogram(), LogHistogram()]
        self.latency_diff = Moments()
        self.errors = np.zeros((2, 2), dtype=np.int64)  # [champion err][challenger err]
        self.comparable = 0
        self.contract: Counter[tuple[str, str]] = Counter()
        self.moments = PairMoments()
        self.flips = [0 for _ in self.thresholds]
        self.confusion: Counter[tuple[str, str]] = Counter()
        self.vector_pairs = 0
        self.vector_agree = 0
        self.vector_js = 0.0
        self.sample = HashSample(policy.divergence.sample_size, 2)
        self.quality = Quality()
        self.labelled_sample = HashSample(policy.divergence.sample_size, 3)
        dv = policy.divergence
        self.text = TextAggregates(dv.text_examples, dv.text_example_chars,
                                   tuple(dv.refusal_patterns), dv.text_example_mode)  # fmt: skip

    def add(
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
        bins: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        """Mirrored pairs (rows ``pr`` of the page): paired latency and errors, the response
        contract, divergence, label-joined quality, per segment. ``bins``: the latency bins
        of ``cl`` and ``hl`` (:func:`~router.analysis.sketches.lat_bins`), when known."""
        self.pairs += int(pr.size)
        rows = _Rows(pr, cl.size)
        a, b = rows(cl), rows(hl)
        both = np.isfinite(a) & np.isfinite(b)
        if bins is None:
            self.latency[0].add_array(a[both])
            self.latency[1].add_array(b[both])
        else:
            self.latency[0].add_bins(rows(bins[0])[both])
            self.latency[1].add_bins(rows(bins[1])[both])
        self.latency_diff.add_array(b[both] - a[both])
        cea, hea = rows(ce), rows(he)
        for i in (0, 1):
            for j in (0, 1):
                self.errors[i, j] += int(np.count_nonzero((cea == bool(i)) & (hea == bool(j))))
        ok = ~cea & ~hea
        self.comparable += int(np.count_nonzero(ok))
        contract = cols["contract"]
        texts = [] if contract.null_count() == contract.len() else (
            contract.gather(pr[ok]).drop_nulls().to_list()
        )  # fmt: skip
        for text in texts:
            ct = orjson.loads(text)
            if not isinstance(ct, dict):
                continue
            for change in ("missing", "extra", "retyped", "changed"):
                paths = ct.get(change)
                if isinstance(paths, list):
                    for path in paths:
                        self.contract[(change, str(path))] += 1
        pcombo = rows(combo)
        labels = rows(labels_all)
        if self.kind == "text":
            self._add_text(cols, pr[ok], h, combo, seg_of, cp, hp)
            return
        if self.kind in ("class", "vector") or cpf is None or hpf is None:
            cps, hps = cp.gather(pr).to_list(), hp.gather(pr).to_list()
            for idx in np.nonzero(ok)[0].tolist():
                lab = labels[idx]
                self._add_slow(
                    cps[idx], hps[idx], None if math.isnan(lab) else float(lab),
                    seg_of[int(pcombo[idx])],
                )  # fmt: skip
            return
        ph = rows(h)
        x_all, y_all = rows(cpf), rows(hpf)
        valid = ok & np.isfinite(x_all) & np.isfinite(y_all)
        x, y = x_all[valid], y_all[valid]
        if not x.size:
            return
        pm = self.moments
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
        self.sample.add_columns(ph[vidx], [x, y])
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
        sel = np.flatnonzero(has)  # (a take: a random boolean mask indexes ~3x slower)
        x, y, lab, sc = x[sel], y[sel], lab_all[sel], sc[sel]
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
            hidx = vidx[sel]
            self.labelled_sample.add_columns(ph[hidx], [ylf, x, y])
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

    def _add_text(
        self, cols: pl.DataFrame, rows: np.ndarray, h: np.ndarray, combo: np.ndarray,
        seg_of: list[list[SegmentAgg]], cp: pl.Series, hp: pl.Series,
    ) -> None:  # fmt: skip
        """Text predictions (:mod:`router.analysis.text`), pair by pair; per segment the exact
        matches count as agreement and ``1 - ratio`` as the absolute difference. The timing
        columns are read when the page has them (not for the noise floor's pairs)."""
        if not rows.size:
            return
        cps, hps = cp.gather(rows).to_list(), hp.gather(rows).to_list()
        timing = "cttft" in cols.columns
        if timing:
            t = cols.select("cttft", "httft", "cdur", "hdur", "ctok", "htok").gather(rows)
            tv = [t[c].to_list() for c in t.columns]
        keys = h[rows].tolist()
        for i, (a, b) in enumerate(zip(cps, hps, strict=True)):
            if not isinstance(a, str) or not isinstance(b, str):
                continue
            pair = TextPair(a, b, key=int(keys[i]))
            if timing:
                (pair.c_ttft_ms, pair.h_ttft_ms, pair.c_duration_ms, pair.h_duration_ms,
                 pair.c_tokens, pair.h_tokens) = (col[i] for col in tv)  # fmt: skip
            same, ratio = self.text.add(pair)
            for agg in seg_of[int(combo[rows[i]])]:
                agg.pairs += 1
                agg.agree += same
                agg.abs_diff += 1.0 - ratio

    def _add_slow(
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
        p, r = as_vector(json_or_none(cp)), as_vector(json_or_none(hp))
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

    def merge(self, o: PairAggregates) -> None:
        """Fold in the pairs of another accumulator (disjoint records, same policy)."""
        self.pairs += o.pairs
        self.comparable += o.comparable
        self.vector_pairs += o.vector_pairs
        self.vector_agree += o.vector_agree
        self.vector_js += o.vector_js
        for v in (0, 1):
            self.latency[v].merge(o.latency[v])
        self.latency_diff.merge(o.latency_diff)
        self.errors += o.errors
        self.contract.update(o.contract)
        self.moments.merge(o.moments)
        self.flips = [a + b for a, b in zip(self.flips, o.flips, strict=True)]
        self.confusion.update(o.confusion)
        self.sample.merge(o.sample)
        self.quality.merge(o.quality)
        self.labelled_sample.merge(o.labelled_sample)
        self.text.merge(o.text)


class _Rows:
    """Rows ``pr`` of a page's columns: a copy of those rows, or the column itself when every
    row is a pair (a fully mirrored stream), which saves a gather per column."""

    def __init__(self, pr: np.ndarray, n: int) -> None:
        self.pr = pr
        self.some = pr.size != n  # (pr is sorted and unique: all rows iff n of them)

    def __call__(self, col: np.ndarray) -> np.ndarray:
        return col[self.pr] if self.some else col


def _logloss_arr(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPS, 1 - EPS)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))
