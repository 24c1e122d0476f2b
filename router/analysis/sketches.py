"""Mergeable summaries: ``merge(summary(A), summary(B)) == summary(A ∪ B)``.

* :class:`Moments`: count, mean and centred sum of squares (Welford's update, Chan et al.'s
  merge): no cancellation when the spread is tiny against the values (latencies, predictions
  near 1e8 differing by 0.5), and ``merge`` is exact up to rounding.
* :class:`CoMoments`: the same for pairs (means, centred sums of squares and cross-products).
* :class:`LogHistogram`: fixed log-spaced bins (2% wide) for latencies: quantiles within 1%,
  merged by adding counts.
* :class:`HashSample`: bottom-k sample by a hash of the request id. The k smallest hashes
  of a union are the k smallest of the two samples' hashes, so it merges exactly, and the same
  requests are sampled on every shard and in every process (no RNG state to share).
* :class:`IdSet`: the request-id fingerprints seen, as sorted int64 runs (8 bytes an id).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(slots=True)
class Moments:
    """Count ``n``, mean ``mu`` and centred sum of squares ``m2 = Σ (x − mu)²``.

    A batch is summarised with numpy's pairwise sums (mean first, then the squares of the
    deviations from it) and folded in with Chan et al.'s parallel update
    ``m2 = m2_a + m2_b + δ² n_a n_b / n``, so no sum of raw squares is ever formed."""

    n: float = 0.0
    mu: float = 0.0
    m2: float = 0.0

    def add(self, x: float) -> None:
        self.n += 1
        d = x - self.mu
        self.mu += d / self.n
        self.m2 += d * (x - self.mu)

    def add_array(self, x: np.ndarray) -> None:
        if x.size:
            mb = float(x.mean())
            dev = x - mb
            self.merge(Moments(float(x.size), mb, float((dev * dev).sum())))

    def add_zeros(self, k: float) -> None:
        """``k`` observations equal to 0 (units or requests without an outcome)."""
        if k > 0:
            self.merge(Moments(float(k), 0.0, 0.0))

    def merge(self, o: Moments) -> None:
        if o.n <= 0:
            return
        if self.n <= 0:
            self.n, self.mu, self.m2 = o.n, o.mu, o.m2
            return
        n = self.n + o.n
        d = o.mu - self.mu
        self.mu += d * (o.n / n)
        self.m2 += o.m2 + d * d * (self.n * o.n / n)
        self.n = n

    @property
    def mean(self) -> float | None:
        return self.mu if self.n else None

    @property
    def s(self) -> float:
        """The sum of the values."""
        return self.n * self.mu

    @property
    def var(self) -> float | None:
        """Sample variance (ddof=1); None below two observations."""
        if self.n < 2:
            return None
        return max(self.m2 / (self.n - 1), 0.0)


@dataclass(slots=True)
class CoMoments:
    """Bivariate :class:`Moments` of pairs ``(x, y)``: count, means, centred sums of squares and
    of cross-products (for Pearson's r and the delta method), merged exactly as above."""

    n: float = 0.0
    mx: float = 0.0
    my: float = 0.0
    cxx: float = 0.0
    cyy: float = 0.0
    cxy: float = 0.0

    def add_arrays(self, x: np.ndarray, y: np.ndarray) -> None:
        if x.size:
            mx, my = float(x.mean()), float(y.mean())
            dx, dy = x - mx, y - my
            self.merge(CoMoments(float(x.size), mx, my, float((dx * dx).sum()),
                                 float((dy * dy).sum()), float((dx * dy).sum())))  # fmt: skip

    def merge(self, o: CoMoments) -> None:
        if o.n <= 0:
            return
        if self.n <= 0:
            self.n, self.mx, self.my = o.n, o.mx, o.my
            self.cxx, self.cyy, self.cxy = o.cxx, o.cyy, o.cxy
            return
        n = self.n + o.n
        dx, dy = o.mx - self.mx, o.my - self.my
        w = self.n * o.n / n
        self.mx += dx * (o.n / n)
        self.my += dy * (o.n / n)
        self.cxx += o.cxx + dx * dx * w
        self.cyy += o.cyy + dy * dy * w
        self.cxy += o.cxy + dx * dy * w
        self.n = n


LAT_MIN_MS = 0.01
LAT_GROWTH = 1.02
LAT_BINS = math.ceil(math.log(1e7 / LAT_MIN_MS) / math.log(LAT_GROWTH)) + 1
_LOG_G = math.log(LAT_GROWTH)


def lat_bin(ms: np.ndarray) -> np.ndarray:
    x = np.maximum(ms, LAT_MIN_MS)
    return np.minimum((np.log(x / LAT_MIN_MS) / _LOG_G).astype(np.int64), LAT_BINS - 1)


def lat_value(idx: int) -> float:
    """Representative value of a bin: its geometric midpoint."""
    return LAT_MIN_MS * LAT_GROWTH ** (idx + 0.5)


def lat_edges(idx: int) -> tuple[float, float]:
    """The bounds of a bin (the first bin also holds everything below ``LAT_MIN_MS``, the last
    everything above its lower edge)."""
    lo = 0.0 if idx == 0 else LAT_MIN_MS * LAT_GROWTH**idx
    hi = math.inf if idx >= LAT_BINS - 1 else LAT_MIN_MS * LAT_GROWTH ** (idx + 1)
    return lo, hi


@dataclass(slots=True)
class LogHistogram:
    counts: np.ndarray = field(default_factory=lambda: np.zeros(LAT_BINS, dtype=np.int64))

    def add_array(self, ms: np.ndarray) -> None:
        if ms.size:
            self.counts += np.bincount(lat_bin(ms), minlength=LAT_BINS)

    def merge(self, o: LogHistogram) -> None:
        self.counts += o.counts

    @property
    def n(self) -> int:
        return int(self.counts.sum())

    def _at_rank(self, rank: int) -> float:
        cum = np.cumsum(self.counts)
        return lat_value(int(np.searchsorted(cum, rank + 1)))

    def quantile(self, q: float) -> float | None:
        n = self.n
        if n == 0:
            return None
        return self._at_rank(min(math.ceil(q * n) - 1, n - 1) if q > 0 else 0)

    def bounds_at_ranks(self, low: int, high: int) -> tuple[float | None, float | None]:
        """``[X_(low), X_(high)]`` (1-based order statistics) widened to their bins' edges, so
        the binning never narrows an interval; None for a rank outside ``1..n``."""
        n = self.n
        cum = np.cumsum(self.counts)
        lo = hi = None
        if 1 <= low <= n:
            lo = lat_edges(int(np.searchsorted(cum, low)))[0]
        if 1 <= high <= n:
            hi = lat_edges(int(np.searchsorted(cum, high)))[1]
        return lo, (hi if hi is not None and math.isfinite(hi) else None)

    def cdf_points(self) -> tuple[np.ndarray, np.ndarray]:
        nz = np.nonzero(self.counts)[0]
        if nz.size == 0:
            return np.zeros(0), np.zeros(0)
        cum = np.cumsum(self.counts)[nz] / self.n
        return LAT_MIN_MS * LAT_GROWTH ** (nz + 1.0), cum


class HashSample:
    """Bottom-k sample of numeric rows keyed by a hash of their request id
    (:func:`router.analysis.frames.rid_hash`, the same in every process).

    Rows are kept in numpy arrays and offered a batch at a time.
    The order is total (hash, then the row's values), so ``merge`` is exact and deterministic.
    """

    def __init__(self, k: int, width: int) -> None:
        self.k = k
        self.width = width
        self._h = np.zeros(0, dtype=np.int64)
        self._r = np.zeros((0, width), dtype=float)
        # rows offered since the last concatenation, in order: offers append here, and the
        # held rows are concatenated when next read or trimmed (not once per page: a page
        # offers a few rows once the sample is full, and the sample is k to 2k rows)
        self._parts: list[tuple[np.ndarray, np.ndarray]] = []
        self._size = 0  # rows held, pending parts included
        self._max = 0  # the largest hash held (when _size)
        self.seen = 0

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "hashes" in state:  # pickled before the pending parts (a stored rollup)
            state["_h"], state["_r"] = state.pop("hashes"), state.pop("rows")
            state["_parts"], state["_size"] = [], int(state["_h"].size)
            state["_max"] = int(state["_h"].max()) if state["_h"].size else 0
        self.__dict__.update(state)

    @property
    def hashes(self) -> np.ndarray:
        self._join()
        return self._h

    @property
    def rows(self) -> np.ndarray:
        self._join()
        return self._r

    def _join(self) -> None:
        if self._parts:
            self._h = np.concatenate([self._h, *(h for h, _ in self._parts)])
            self._r = np.concatenate([self._r, *(r for _, r in self._parts)])
            self._parts = []

    def add_batch(self, hashes: np.ndarray, rows: np.ndarray) -> None:
        self.seen += int(hashes.size)
        if hashes.size:
            self._offer(hashes.astype(np.int64), rows.reshape(hashes.size, self.width))

    def add_columns(self, hashes: np.ndarray, columns: list[np.ndarray]) -> None:
        """:meth:`add_batch` of the rows whose values are ``columns`` (aligned with
        ``hashes``): once the sample is full only rows that can enter it are stacked."""
        self.seen += int(hashes.size)
        if self._size >= self.k and hashes.size:
            keep = hashes <= self._max
            if not keep.all():
                hashes, columns = hashes[keep], [c[keep] for c in columns]
        if hashes.size:
            self._offer(hashes.astype(np.int64), np.column_stack(columns))

    def _offer(self, h: np.ndarray, rows: np.ndarray) -> None:
        if self._size >= self.k:
            keep = h <= self._max
            h, rows = h[keep], rows[keep]
        if not h.size:
            return
        top = int(h.max())
        self._max = top if not self._size else max(self._max, top)
        self._parts.append((h, rows))
        self._size += int(h.size)
        if self._size > 2 * self.k:  # trim lazily: amortised O(1) sorts per row
            self._trim()

    def _trim(self) -> None:
        self._join()
        if self._h.size > self.k:
            keep = np.argpartition(self._h, self.k - 1)[: self.k]
            kth = self._h[keep].max()
            if np.count_nonzero(self._h <= kth) > self.k:  # a tie at the cut: total order
                keep = self._order()[: self.k]
            self._h, self._r = self._h[keep], self._r[keep]
            self._size, self._max = self.k, int(kth)

    def _order(self) -> np.ndarray:
        keys = [self.rows[:, j] for j in range(self.width - 1, -1, -1)] + [self.hashes]
        return np.lexsort(keys)

    def merge(self, o: HashSample) -> None:
        self._offer(o.hashes, o.rows)
        self.seen += o.seen

    def items(self) -> np.ndarray:
        """Sampled rows in their total order (deterministic)."""
        self._trim()
        return self.rows[self._order()]

    @property
    def complete(self) -> bool:
        return self.seen <= self.k


class IdSet:
    """A set of int64 fingerprints (hashes: their bits are uniform) kept exactly as sorted
    runs of doubling size (a small LSM tree, 8 bytes an id instead of the ~80 of a Python set
    of ints), behind a blocked Bloom filter that answers most queries alone.

    * The filter has a 64-bit word per four to eight ids (1 to 2 bytes an id), the word picked
      by the fingerprint's top 32 bits (``top * words >> 32``: in the fingerprints' order), three
      of its bits by the low 18. About 1-3% of absent ids pass it; only those, and the ids
      held, are binary-searched in the runs. A query so costs a few vector passes instead of
      a binary search of every run (at 10^7 ids ~0.2-0.35 us, mostly cache misses), and
      queries sorted by fingerprint (a page is) read the filter in order. The filter is rebuilt
      from the runs, twice as large, when the ids outgrow it, and not pickled (rebuilt when
      next needed).
    * Runs stop merging at about :attr:`RUN_CAP` ids: merging two runs copies both, so a set of
      ``n`` ids would otherwise need ``2n`` at its last merges (the peak memory of a long
      window), and every id would be copied once more per doubling of the window.

    :meth:`merge` only takes the other set's runs (they may hold ids of this one): the
    repeats are dropped, and counted in :attr:`repeats`, by one sort when the size or the
    values are next needed (:meth:`compact`)."""

    RUN_CAP = 1 << 22  # ids of a run past which runs are not merged (32 MB)
    BITS_PER_ID = 8  # the filter's bits an id at least (twice that when it is rebuilt)

    def __init__(self) -> None:
        self.runs: list[np.ndarray] = []
        self.repeats = 0  # ids merged in that were here already (see merge)
        self._overlap = False  # runs may share ids (after a merge)
        self._init_filter()

    def _init_filter(self) -> None:
        self._words: np.ndarray | None = None  # the filter (None: to be built from the runs)
        self._held = 0  # ids in the runs, with the repeats merges brought in

    def __getstate__(self) -> dict[str, object]:
        return {"runs": self.runs, "repeats": self.repeats, "_overlap": self._overlap}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._init_filter()
        self._held = sum(r.size for r in self.runs)

    def __len__(self) -> int:
        self.compact()
        return sum(r.size for r in self.runs)

    # ------------------------------------------------------------ the filter
    def _locate(self, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each id's filter word and the mask of its three bits."""
        assert self._words is not None
        u = h.view(np.uint64)
        top = (u ^ _SIGN) >> _32  # (sign flipped: ascending ids, ascending words)
        word = ((top * np.uint64(self._words.size)) >> _32).view(np.int64)
        mask = _ONE << (u & _LOW6)
        mask |= _ONE << ((u >> _6) & _LOW6)
        mask |= _ONE << ((u >> _12) & _LOW6)
        return word, mask

    def _mark(self, h: np.ndarray) -> None:
        """Set the bits of the sorted ids ``h`` (their words ascend: OR-reduced per word), a
        block at a time (the temporaries of a whole run would be several times its size)."""
        assert self._words is not None
        for i in range(0, h.size, _BLOCK):
            word, mask = self._locate(h[i : i + _BLOCK])
            starts = np.flatnonzero(np.concatenate(([True], word[1:] != word[:-1])))
            if starts.size < word.size:
                word, mask = word[starts], np.bitwise_or.reduceat(mask, starts)
            self._words[word] |= mask

    def _filter(self, need: int) -> np.ndarray:
        """The filter, (re)built from the runs when missing or when ``need`` ids outgrow it."""
        words = self._words
        if words is None or need * self.BITS_PER_ID > 64 * words.size:
            self._words = words = np.zeros(max(64, -(-need * self.BITS_PER_ID // 32)), np.uint64)
            for run in self.runs:
                self._mark(run)
        return words

    def _maybe(self, h: np.ndarray) -> np.ndarray:
        """Which of ``h`` may be held (all that are, and 1-3% of the others); a block at a
        time, as :meth:`_mark`."""
        words = self._filter(self._held)
        out = np.empty(h.size, dtype=bool)
        for i in range(0, h.size, _BLOCK):
            word, mask = self._locate(h[i : i + _BLOCK])
            np.equal(words[word] & mask, mask, out=out[i : i + _BLOCK])
        return out

    # ------------------------------------------------------------ the set
    def contains(self, h: np.ndarray, presorted: bool = False) -> np.ndarray:
        found = np.zeros(h.size, dtype=bool)
        if not self.runs or not h.size:
            return found
        h = np.ascontiguousarray(h, dtype=np.int64)
        cand = np.flatnonzero(self._maybe(h))
        if not cand.size:
            return found
        # sorted queries: the binary searches walk each run in order
        q = h[cand]
        if not presorted:
            order = np.argsort(q)
            cand, q = cand[order], q[order]
        hit = np.zeros(q.size, dtype=bool)
        for run in self.runs:
            pos = np.searchsorted(run, q)
            pos[pos == run.size] = 0
            hit |= run[pos] == q
        found[cand] = hit
        return found

    def add_new(self, h: np.ndarray, presorted: bool = False) -> None:
        """Add ids known to be absent and distinct (``presorted``: ascending already)."""
        if not h.size:
            return
        self.compact()
        run = np.array(h, dtype=np.int64)  # (a copy: the caller's array may be a view)
        if not presorted:
            run.sort()
        self._held += run.size
        if self._words is not None:
            self._filter(self._held)
            self._mark(run)
        self._push(run)

    def _push(self, run: np.ndarray) -> None:
        """Add a sorted run, merging it with the runs no larger than it (a binary counter),
        up to :attr:`RUN_CAP` ids a run."""
        while self.runs and self.runs[-1].size <= run.size < self.RUN_CAP:
            run = np.concatenate([self.runs.pop(), run])
            run.sort(kind="stable")  # two sorted halves: merged in linear time
        self.runs.append(run)

    def merge(self, o: IdSet) -> None:
        """Add the ids of ``o``: its sorted runs are merged in as they are, so an id of both
        is held twice until the next :meth:`compact` (which counts it in :attr:`repeats`);
        membership is right at once, and no search of this set is made."""
        o.compact()
        for run in sorted(o.runs, key=len, reverse=True):
            self._overlap = self._overlap or bool(self.runs)
            self._held += run.size
            if self._words is not None:
                self._filter(self._held)
                self._mark(run)
            self._push(run)
        self.repeats += o.repeats

    def compact(self) -> int:
        """Drop the ids that merges brought in twice, counting them in :attr:`repeats`
        (one sort of every id, after merges only); returns :attr:`repeats`."""
        if self._overlap:
            both = np.concatenate(self.runs)
            self.runs = []
            both.sort(kind="stable")  # (sorted runs: merged)
            again = both[1:] == both[:-1]
            n = int(np.count_nonzero(again))
            if n:
                both = both[np.concatenate(([True], ~again))]
            self.runs = [both[i : i + self.RUN_CAP] for i in range(0, both.size, self.RUN_CAP)]
            self.repeats += n
            self._overlap = False
            self._held = both.size
            if n:
                self._words = None  # (rebuilt without the repeats when next needed)
        return self.repeats

    def values(self) -> np.ndarray:
        self.compact()
        if len(self.runs) == 1:
            return self.runs[0].copy()
        if not self.runs:
            return np.zeros(0, dtype=np.int64)
        return np.sort(np.concatenate(self.runs), kind="stable")  # (sorted runs: merged)


_SIGN = np.uint64(1 << 63)  # flipped: signed order is then unsigned order (the filter's words)
_ONE, _6, _12, _32, _LOW6 = (np.uint64(x) for x in (1, 6, 12, 32, 63))
_BLOCK = 1 << 13  # ids the filter takes at a time (64 KB temporaries: in cache, never mmap-ed)


class LazyIdSet:
    """An :class:`IdSet` that sorts only when asked: batches are kept as they come and folded
    into the sorted runs at the first membership query after them. For a set that is queried
    rarely (the conflict fingerprints: only when a request id repeats), insertion costs a copy."""

    def __init__(self) -> None:
        self._set = IdSet()
        self._pending: list[np.ndarray] = []
        self._merged = False  # pending holds another set's ids (they may repeat ours)

    def __len__(self) -> int:
        if self._merged:
            self._flush()
        return len(self._set) + sum(p.size for p in self._pending)

    def add_new(self, h: np.ndarray) -> None:
        """Add ids known to be absent and distinct."""
        if h.size:
            self._pending.append(np.array(h, dtype=np.int64))

    def _flush(self) -> None:
        """Sort the batches into the set one by one (one concatenation of them all would
        hold every pending id twice, and the sort a third time)."""
        pending, self._pending = self._pending, []
        pending.reverse()
        while pending:
            new = pending.pop()
            if self._merged:  # (only then can an id repeat)
                new = np.unique(new)
                self._set.add_new(new[~self._set.contains(new, presorted=True)], presorted=True)
            else:
                self._set.add_new(new)
        self._merged = False

    def contains(self, h: np.ndarray) -> np.ndarray:
        self._flush()
        return self._set.contains(h)

    def merge(self, o: LazyIdSet) -> None:
        """Add the ids of ``o``, lazily too: sorted and deduplicated at the next query."""
        o._set.compact()
        self._pending.extend(o._set.runs)
        self._pending.extend(o._pending)
        self._merged = self._merged or bool(o._set.runs or o._pending)
