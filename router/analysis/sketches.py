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
* :class:`IdSet`: the request-id fingerprints seen, as sorted int64 runs (8 bytes an id),
  written to temporary files past a few million ids (:data:`SPILL_AT`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import mmap
import os
import shutil
import tempfile
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np

try:
    import fcntl
except ImportError:  # (not POSIX: spill directories of killed processes are not found)
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)


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


def lat_bins(ms: np.ndarray) -> np.ndarray:
    """:func:`lat_bin` of every value (int16), a bin of 0 for those that are not finite
    (whose bin a caller must not use)."""
    x = np.where(np.isfinite(ms), ms, LAT_MIN_MS)
    return lat_bin(x).astype(np.int16)


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

    def add_bins(self, bins: np.ndarray) -> None:
        """Values given by their bins (:func:`lat_bins`)."""
        if bins.size:
            self.counts += np.bincount(bins, minlength=LAT_BINS)

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


_SIGN = np.uint64(1 << 63)  # flipped: signed order is then unsigned order (the filter's words)
_ONE, _6, _12, _32, _LOW6 = (np.uint64(x) for x in (1, 6, 12, 32, 63))
_BLOCK = 1 << 13  # ids the filter takes at a time (64 KB temporaries: in cache, never mmap-ed)
_PROBE_MAX = 1 << 20  # ids of a query whose filter words are kept for the add after it (16 MB)


# ------------------------------------------------------------------ spilled runs
# Ids held on disk instead of in RAM (bounded memory for long windows): a sorted run of at
# least SPILL_AT ids (4M: 32 MB) is written to a temporary directory (under
# tempfile.gettempdir(): TMPDIR) and only a fence index stays in RAM, every FENCE-th id
# (1/64 of the run: 0.125 bytes an id). A lookup reads one FENCE-id block (512 bytes) of the
# run's memory map for each id asked, and the mapped pages are dropped after each query
# (MADV_DONTNEED), so they never add up in the resident set. The directory is removed when its
# set is garbage-collected (weakref.finalize; also at exit). A process killed outright
# (SIGKILL, the OOM killer) runs no finaliser: its owner holds a lock on the directory's
# LOCK_NAME file while it lives (flock: freed by the kernel when the process dies, whatever
# kills it), and the next directory made removes those whose lock is free (_sweep).
SPILL_AT = 1 << 22  # ids of a sorted run written to disk
PENDING_SPILL_AT = 1 << 20  # unsorted pending ids of a LazyIdSet written to disk (8 MB)
FENCE = 64  # ids a block of a spilled run: one fence key each in RAM
# written in this process (all sets); swept: directories of dead processes removed
SPILLED = {"runs": 0, "ids": 0, "bytes": 0, "swept": 0}
LOCK_NAME = ".owner.lock"


def _spill_failed(exc: OSError) -> bool:
    log.warning("request ids kept in RAM: cannot write to %s (%s)", tempfile.gettempdir(), exc)
    return True


def _remove_dir(path: str, pid: int, lock: int) -> None:
    if os.getpid() == pid:  # (not from a forked child's copy of the set)
        shutil.rmtree(path, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.close(lock)


def _lock(path: str) -> int:
    """Hold the lock of spill directory ``path`` (an open descriptor; -1 where there is no
    ``flock``)."""
    if fcntl is None:
        return -1
    # (locked under another name, then renamed: a sweep never sees the lock file unlocked)
    fresh = os.path.join(path, LOCK_NAME + ".new")
    fd = os.open(fresh, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(fresh, os.path.join(path, LOCK_NAME))
    except OSError:
        os.close(fd)
        raise
    return fd


def _sweep(parent: str, prefix: str) -> int:
    """Remove the spill directories under ``parent`` whose owner has died without removing
    them (this user's, with a lock file that no process holds); returns how many. A
    directory without a lock file (being made, or made by a version without one) is left."""
    if fcntl is None:
        return 0
    swept = 0
    with contextlib.suppress(OSError), os.scandir(parent) as entries:
        for e in entries:
            if not e.name.startswith(prefix) or not e.is_dir(follow_symlinks=False):
                continue
            try:
                if e.stat(follow_symlinks=False).st_uid != os.getuid():
                    continue
                fd = os.open(os.path.join(e.path, LOCK_NAME), os.O_RDWR)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # (held: its owner lives)
                os.close(fd)
                continue
            shutil.rmtree(e.path, ignore_errors=True)
            os.close(fd)
            swept += 1
    if swept:
        SPILLED["swept"] += swept
        log.info("removed %d spill directories of processes that died (%s%s*)", swept,
                 os.path.join(parent, ""), prefix)  # fmt: skip
    return swept


class _SpillDir:
    """The temporary directory of one set's files, made when first needed and removed with
    its owner (``weakref.finalize``: no cycle, so also when collection is disabled); locked
    while its process lives, so that the directories of killed processes are found and
    removed (:func:`_sweep`, when a directory is made)."""

    def __init__(self, owner: object, prefix: str) -> None:
        parent = tempfile.gettempdir()
        _sweep(parent, prefix)
        self.path = tempfile.mkdtemp(prefix=prefix, dir=parent)
        try:
            lock = _lock(self.path)
        except OSError:
            shutil.rmtree(self.path, ignore_errors=True)
            raise
        self._count = 0
        self.finalizer = weakref.finalize(owner, _remove_dir, self.path, os.getpid(), lock)

    def new_file(self, suffix: str) -> str:
        self._count += 1
        return os.path.join(self.path, f"{self._count:06d}.{suffix}")


class _DiskRun:
    """A sorted run of ids in a file (padded with its last id to whole blocks), with its fence
    keys in RAM; lookups read one block an id through a memory map."""

    __slots__ = ("_blocks", "_map", "fence", "path", "size")

    def __init__(self, path: str, run: np.ndarray) -> None:
        self.path, self.size = path, int(run.size)
        pad = -run.size % FENCE
        with open(path, "wb") as f:
            np.ascontiguousarray(run).tofile(f)
            if pad:
                np.full(pad, run[-1], dtype=np.int64).tofile(f)
        self.fence = run[::FENCE].copy()
        SPILLED["runs"] += 1
        SPILLED["ids"] += self.size
        SPILLED["bytes"] += (self.size + pad) * 8
        with open(path, "rb") as f:
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self._blocks = np.frombuffer(self._map, dtype=np.int64).reshape(-1, FENCE)

    def keys(self) -> np.ndarray:
        """The run (a view of the map: call :meth:`release` when done with it)."""
        return self._blocks.reshape(-1)[: self.size]

    def read(self) -> np.ndarray:
        out = self.keys().copy()
        self.release()
        return out

    def contains(self, q: np.ndarray) -> np.ndarray:
        """Which of the ids ``q`` the run holds (one block read an id)."""
        out = np.zeros(q.size, dtype=bool)
        for i in range(0, q.size, _BLOCK):
            part = q[i : i + _BLOCK]
            j = np.searchsorted(self.fence, part, side="right") - 1
            inside = j >= 0
            rows = self._blocks[np.maximum(j, 0)]
            out[i : i + _BLOCK] = (rows == part[:, None]).any(axis=1) & inside
        return out

    def release(self) -> None:
        """Drop the run's mapped pages from the resident set (read again from the file)."""
        self._map.madvise(mmap.MADV_DONTNEED)

    def close(self) -> None:
        self._blocks = np.zeros((0, FENCE), dtype=np.int64)
        self._map.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)


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
      next needed). ``bloom=False``: no filter (a set queried rarely: every query is searched).
    * Runs stop merging at about :attr:`RUN_CAP` ids: merging two runs copies both, so a set of
      ``n`` ids would otherwise need ``2n`` at its last merges (the peak memory of a long
      window), and every id would be copied once more per doubling of the window.
    * A run of :data:`SPILL_AT` ids or more (a capped run) is written to a temporary file
      (:class:`_DiskRun`): RAM holds the runs below the cap (under ``2 * SPILL_AT`` ids, 64 MB),
      the filter and 1/64 of the spilled ids (their fence), so about 1.1-2.1 bytes an id
      past the first few million. Pickling reads the spilled runs back (another process or
      machine gets the ids, not the files).

    :meth:`merge` only takes the other set's runs (they may hold ids of this one): the
    repeats are dropped, and counted in :attr:`repeats`, by one sort when the size or the
    values are next needed (:meth:`compact`)."""

    RUN_CAP = 1 << 22  # ids of a run past which runs are not merged (32 MB)
    BITS_PER_ID = 8  # the filter's bits an id at least (twice that when it is rebuilt)
    RESERVE_MAX = 1 << 27  # ids a filter is sized for in advance at most (256 MB)

    def __init__(self, bloom: bool = True) -> None:
        self.runs: list[np.ndarray] = []  # in RAM
        self.disk: list[_DiskRun] = []  # spilled (see SPILL_AT)
        self.bloom = bloom
        self.repeats = 0  # ids merged in that were here already (see merge)
        self._overlap = False  # runs may share ids (after a merge)
        self._dir: _SpillDir | None = None
        self._dir_failed = False  # a run could not be written (then all stay in RAM)
        self._init_filter()

    def _init_filter(self) -> None:
        self._words: np.ndarray | None = None  # the filter (None: to be built from the runs)
        self._held = 0  # ids in the runs, with the repeats merges brought in
        # the last query's ids with their words and masks, for the filter of that size: a
        # page is queried, then added as it is (see _mark)
        self._probe: tuple[np.ndarray, int, np.ndarray, np.ndarray] | None = None

    def __getstate__(self) -> dict[str, object]:
        runs = [d.read() for d in self.disk] + self.runs
        return {"runs": runs, "repeats": self.repeats, "_overlap": self._overlap,
                "bloom": self.bloom}  # fmt: skip

    def __setstate__(self, state: dict[str, Any]) -> None:
        runs = state.pop("runs")
        state.setdefault("bloom", True)
        self.__dict__.update(state)
        self.runs, self.disk, self._dir, self._dir_failed = [], [], None, False
        self._init_filter()
        self._held = sum(r.size for r in runs)
        for run in runs:  # (the large ones to disk again)
            self._keep(run)

    def __len__(self) -> int:
        self.compact()
        return self._size()

    def _size(self) -> int:
        return sum(r.size for r in self.runs) + sum(d.size for d in self.disk)

    @property
    def spill_dir(self) -> str | None:
        """The directory of the spilled runs (None: none spilled)."""
        return self._dir.path if self._dir is not None else None

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

    def _mark(self, h: np.ndarray, located: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """Set the bits of the sorted ids ``h`` (their words ascend: OR-reduced per word), a
        block at a time (the temporaries of a whole run would be several times its size);
        ``located``: their words and masks already (:meth:`_located`)."""
        assert self._words is not None
        for i in range(0, h.size, _BLOCK):
            if located is None:
                word, mask = self._locate(h[i : i + _BLOCK])
            else:
                word, mask = located[0][i : i + _BLOCK], located[1][i : i + _BLOCK]
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
            for d in self.disk:  # (read through the map, dropped after)
                self._mark(d.keys())
                d.release()
        return words

    def reserve(self, n: int) -> None:
        """Size the filter for ``n`` ids now (an estimate of the ids to come, at most
        :attr:`RESERVE_MAX`), so it is not rebuilt from the runs, spilled ones read back, at
        each doubling on the way (measured at 50M ids: a sixth of the set's time)."""
        if self.bloom and n > self._held:
            self._filter(min(n, self.RESERVE_MAX))

    def _maybe(self, h: np.ndarray) -> np.ndarray:
        """Which of ``h`` may be held (all that are, and 1-3% of the others); a block at a
        time, as :meth:`_mark`."""
        words = self._filter(self._held)
        out = np.empty(h.size, dtype=bool)
        keep = h.size <= _PROBE_MAX  # (a page: remembered; not a whole set's ids)
        word_all = np.empty(h.size if keep else 0, np.int64)
        mask_all = np.empty(h.size if keep else 0, np.uint64)
        for i in range(0, h.size, _BLOCK):
            word, mask = self._locate(h[i : i + _BLOCK])
            if keep:
                word_all[i : i + _BLOCK], mask_all[i : i + _BLOCK] = word, mask
            np.equal(words[word] & mask, mask, out=out[i : i + _BLOCK])
        self._probe = (h, words.size, word_all, mask_all) if keep else None
        return out

    def _located(self, h: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """The words and masks of ``h`` when the last query was of this very array, under the
        filter as it is now (None: to be computed)."""
        probe, self._probe = self._probe, None
        if probe is None or probe[0] is not h or self._words is None:
            return None
        return (probe[2], probe[3]) if probe[1] == self._words.size else None

    # ------------------------------------------------------------ the set
    def contains(self, h: np.ndarray, presorted: bool = False) -> np.ndarray:
        found = np.zeros(h.size, dtype=bool)
        if not (self.runs or self.disk) or not h.size:
            return found
        h = np.ascontiguousarray(h, dtype=np.int64)
        if self.bloom:
            cand = np.flatnonzero(self._maybe(h))
            if not cand.size:
                return found
        else:
            cand = np.arange(h.size)
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
        for d in self.disk:
            hit |= d.contains(q)
            d.release()
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
            # (the ids of the last query, as a page's are: their words are known)
            self._mark(run, self._located(h) if presorted else None)
        self._push(run)

    def _push(self, run: np.ndarray) -> None:
        """Add a sorted run, merging it with the runs no larger than it (a binary counter),
        up to :attr:`RUN_CAP` ids a run."""
        while self.runs and self.runs[-1].size <= run.size < self.RUN_CAP:
            run = np.concatenate([self.runs.pop(), run])
            run.sort(kind="stable")  # two sorted halves: merged in linear time
        self._keep(run)

    def _keep(self, run: np.ndarray) -> None:
        """Hold a sorted run: on disk from :data:`SPILL_AT` ids (in RAM if it cannot be
        written: the temporary directory full or not writable)."""
        if run.size >= SPILL_AT and run.size and not self._dir_failed:
            try:
                if self._dir is None:
                    self._dir = _SpillDir(self, "router-ids-")
                self.disk.append(_DiskRun(self._dir.new_file("run"), run))
                return
            except OSError as exc:
                self._dir_failed = _spill_failed(exc)
        self.runs.append(run)

    def _all_runs(self) -> list[np.ndarray]:
        """Every run in RAM (the spilled ones read back)."""
        return [d.read() for d in self.disk] + self.runs

    def _drop_disk(self) -> None:
        for d in self.disk:
            d.close()
        self.disk = []

    def merge(self, o: IdSet) -> None:
        """Add the ids of ``o``: its sorted runs are merged in as they are, so an id of both
        is held twice until the next :meth:`compact` (which counts it in :attr:`repeats`);
        membership is right at once, and no search of this set is made."""
        o.compact()
        runs = o.runs + [d for d in o.disk]
        for item in sorted(runs, key=lambda r: r.size, reverse=True):
            run = item.read() if isinstance(item, _DiskRun) else item
            self._overlap = self._overlap or bool(self.runs or self.disk)
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
            both = np.concatenate(self._all_runs())
            self.runs = []
            self._drop_disk()
            both.sort(kind="stable")  # (sorted runs: merged)
            again = both[1:] == both[:-1]
            n = int(np.count_nonzero(again))
            if n:
                both = both[np.concatenate(([True], ~again))]
            for i in range(0, both.size, self.RUN_CAP):
                self._keep(both[i : i + self.RUN_CAP])
            self.repeats += n
            self._overlap = False
            self._held = both.size
            if n:
                self._words = None  # (rebuilt without the repeats when next needed)
        return self.repeats

    def values(self) -> np.ndarray:
        self.compact()
        runs = self._all_runs()
        if len(runs) == 1:
            return runs[0].copy()
        if not runs:
            return np.zeros(0, dtype=np.int64)
        return np.sort(np.concatenate(runs), kind="stable")  # (sorted runs: merged)


class LazyIdSet:
    """An :class:`IdSet` (without a filter) that sorts only when asked: batches are kept as
    they come and folded into the sorted runs at the first membership query after them. For a
    set that is queried rarely (the conflict fingerprints: only when a request id repeats),
    insertion costs a copy. Past :data:`PENDING_SPILL_AT` pending ids the batches are written
    to a temporary file as they are (unsorted: sorted only if a query comes), so RAM holds
    under ``PENDING_SPILL_AT`` pending ids (8 MB) and, once queried, the set's runs below the
    cap (the sorted ones are spilled as :class:`IdSet`'s)."""

    def __init__(self) -> None:
        self._set = IdSet(bloom=False)
        # batches in RAM (arrays) or on disk (the path and the ids of an unsorted file)
        self._pending: list[np.ndarray | tuple[str, int]] = []
        self._in_ram = 0  # ids of the batches in RAM
        self._merged = False  # pending holds another set's ids (they may repeat ours)
        self._dir: _SpillDir | None = None
        self._dir_failed = False  # a batch could not be written (then all stay in RAM)

    def __getstate__(self) -> dict[str, object]:
        pending = [_load(p) if isinstance(p, tuple) else p for p in self._pending]
        return {"_set": self._set, "_pending": pending, "_merged": self._merged}

    def __setstate__(self, state: dict[str, Any]) -> None:
        pending = state.pop("_pending")
        self.__dict__.update(state)
        self._pending, self._in_ram, self._dir, self._dir_failed = [], 0, None, False
        for p in pending:
            self._hold(p)

    @property
    def spill_dir(self) -> str | None:
        """The directory of the pending batches written to disk (None: none)."""
        return self._dir.path if self._dir is not None else None

    def __len__(self) -> int:
        if self._merged:
            self._flush()
        return len(self._set) + sum(_count(p) for p in self._pending)

    def add_new(self, h: np.ndarray) -> None:
        """Add ids known to be absent and distinct."""
        if h.size:
            self._hold(np.array(h, dtype=np.int64))

    def _hold(self, batch: np.ndarray) -> None:
        """Keep a batch; the batches in RAM go to one file once they reach PENDING_SPILL_AT ids."""
        self._pending.append(batch)
        self._in_ram += int(batch.size)
        if self._in_ram >= PENDING_SPILL_AT and not self._dir_failed:
            path = ""
            try:
                if self._dir is None:
                    self._dir = _SpillDir(self, "router-ids-")
                path = self._dir.new_file("ids")
                keep: list[np.ndarray | tuple[str, int]] = []
                with open(path, "wb") as f:
                    for p in self._pending:
                        if isinstance(p, tuple):
                            keep.append(p)
                        else:
                            np.ascontiguousarray(p).tofile(f)
            except OSError as exc:  # (kept in RAM)
                self._dir_failed = _spill_failed(exc)
                if path:
                    with contextlib.suppress(OSError):
                        os.unlink(path)
                return
            SPILLED["bytes"] += self._in_ram * 8
            keep.append((path, self._in_ram))
            self._pending, self._in_ram = keep, 0

    def _flush(self) -> None:
        """Sort the batches into the set one by one (one concatenation of them all would
        hold every pending id twice, and the sort a third time)."""
        pending, self._pending, self._in_ram = self._pending, [], 0
        pending.reverse()
        while pending:
            item = pending.pop()
            new = _load(item) if isinstance(item, tuple) else item
            if isinstance(item, tuple):
                os.unlink(item[0])
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
        self._merged = self._merged or bool(o._set.runs or o._set.disk or o._pending)
        for d in o._set.disk:
            self._hold(d.read())
        for run in o._set.runs:
            self._hold(run)
        for p in o._pending:
            self._hold(_load(p) if isinstance(p, tuple) else p)


def _load(item: tuple[str, int]) -> np.ndarray:
    return np.fromfile(item[0], dtype=np.int64, count=item[1])


def _count(item: np.ndarray | tuple[str, int]) -> int:
    return item[1] if isinstance(item, tuple) else int(item.size)
