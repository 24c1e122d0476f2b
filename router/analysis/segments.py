"""Per-segment tallies under a bound (pure; no I/O).

A record's ``segment`` (an object of strings, e.g. ``{"country": "DE", "device": "ios"}``) counts
toward a :class:`SegmentAgg` per (field, value). Memory is bounded: per field the first
``max_tracked_values`` values are tracked and later ones fold into "other", fields beyond
``max_fields`` fold into the field "other", and segment combinations (numbered for the unit
table) beyond ``MAX_COMBOS`` fold whole; the records folded are counted per field. A value once
tracked stays tracked and one once folded stays folded, so the page's decoded segment texts can
be cached, and merging two tables applies the bound again (exact while both stay under it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from router.analysis.sketches import LogHistogram, Moments

OTHER = "other"  # the segment value (and field) that values beyond the tracked ones fold into
MAX_COMBOS = 20_000  # distinct segment combinations; beyond, a new one folds into all-"other"
SEG_CACHE = 4_096  # segment JSON texts remembered between pages


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


class SegmentTable:
    """The per-segment tallies of an analysis and the bounded numbering of segment values and
    combinations that they are kept under."""

    def __init__(self, max_tracked_values: int, max_fields: int) -> None:
        self.tallies: dict[tuple[str, str], SegmentAgg] = {}
        self.max_tracked_values = max_tracked_values
        self.max_fields = max_fields
        # segment combinations (tuples of (field, value) items), numbered for the unit table
        self.combo_ids: dict[tuple[Any, ...], int] = {}
        self.combo_keys: list[tuple[Any, ...]] = []
        self._cache: dict[str, tuple[tuple[Any, ...], list[str]]] = {}
        # the values tracked per segment field (bounded); the others fold into "other"
        self._tracked: dict[str, set[str]] = {}
        self.overflow: Counter[str] = Counter()  # records folded, per field

    def page_keys(self, segments: list[str]) -> tuple[list[tuple[Any, ...]], dict[int, list[str]]]:
        """The items of each segment JSON of a page (valid: objects of strings), with () first
        (no segment), values beyond the tracked ones folded into "other"; and, per page code,
        the fields whose value was folded."""
        keys: list[tuple[Any, ...]] = [()]
        folded: dict[int, list[str]] = {}
        for code, text in enumerate(segments, 1):
            hit = self._cache.get(text)
            if hit is None:
                d = orjson.loads(text)
                hit = self.cap(tuple(d.items()) if isinstance(d, dict) else ())
                if len(self._cache) >= SEG_CACHE:
                    self._cache.clear()
                self._cache[text] = hit
            keys.append(hit[0])
            if hit[1]:
                folded[code] = hit[1]
        return keys, folded

    def cap(self, items: tuple[Any, ...]) -> tuple[tuple[Any, ...], list[str]]:
        """A segment combination with untracked values (and fields) folded into "other",
        and the fields it folded; a combination beyond ``MAX_COMBOS`` folds whole."""
        key, folded = self.cap_items(items)
        if key not in self.combo_ids and len(self.combo_keys) >= MAX_COMBOS:
            folded += [n for n, v in key if v != OTHER]
            key = tuple(dict.fromkeys((n, OTHER) for n, _ in key))
        return key, folded

    def cap_items(self, items: Iterable[tuple[str, str]]) -> tuple[tuple[Any, ...], list[str]]:
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

    def combo_id(self, key: tuple[Any, ...]) -> int:
        gid = self.combo_ids.get(key)
        if gid is None:
            gid = self.combo_ids[key] = len(self.combo_keys)
            self.combo_keys.append(key)
        return gid

    def tally(self, item: tuple[str, Any]) -> SegmentAgg:
        agg = self.tallies.get(item)
        if agg is None:
            agg = self.tallies[item] = SegmentAgg()
        return agg

    def merge(self, o: SegmentTable) -> np.ndarray:
        """Fold in another table under this one's bound: the other's values fold into "other"
        here too once this one tracks as many. Returns, per combination id of ``o``, its id
        here (to renumber the other's unit table)."""
        combo_map = np.asarray([self.combo_id(self.cap(k)[0]) for k in o.combo_keys],
                               dtype=np.int64)  # fmt: skip
        self.overflow.update(o.overflow)
        for key, agg in o.tallies.items():
            (item,), folded = self.cap_items([key])
            for name in folded:
                self.overflow[name] += sum(agg.requests)
            self.tallies.setdefault(item, SegmentAgg()).merge(agg)
        return combo_map
