"""Captured input fields (a record's ``fields`` object) as mergeable histograms, the current
side of input drift (pure; no I/O): numbers in signed log bins 1% wide, strings counted per
value. The reference side and the PSI are in :mod:`router.analysis.sections.drift`.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np
import polars as pl

from router.analysis.ndjson import json_or_none


def fine_bin_value(b: int) -> float:
    """The middle of signed log bin ``b`` (1% wide) of the drift histograms (values are binned,
    vectorised, in :meth:`FieldHistograms.add`)."""
    if b == 0:
        return 0.0
    v = 1e-9 * 1.01 ** (abs(b) - 0.5)
    return v if b > 0 else -v


class FieldHistograms:
    """Per captured field: counts of numeric values by fine log bin, and of string values."""

    def __init__(self) -> None:
        self.numeric: dict[str, Counter[int]] = {}
        self.categorical: dict[str, Counter[str]] = {}

    def add_json(self, col: pl.Series) -> None:
        """Captured input fields (JSON objects) into the drift histograms."""
        cols: dict[str, list[Any]] = {}
        for text in col.drop_nulls().to_list():
            d = json_or_none(text)
            if isinstance(d, dict):
                for name, x in d.items():
                    cols.setdefault(name, []).append(x)
        if cols:
            self.add(cols)

    def add(self, cols: dict[str, list[Any]]) -> None:
        for name, values in cols.items():
            x = _floats(values)
            num = np.isfinite(x)
            if num.any():
                xs = x[num]
                tiny = np.abs(xs) < 1e-9
                mag = np.log(np.where(tiny, 1e-9, np.abs(xs)) / 1e-9) / math.log(1.01)
                bins = np.where(tiny, 0, (mag.astype(np.int64) + 1) * np.sign(xs).astype(np.int64))
                keys, counts = np.unique(bins, return_counts=True)
                c = self.numeric.setdefault(name, Counter())
                for k, cnt in zip(keys.tolist(), counts.tolist(), strict=True):
                    c[k] += cnt
            strs = [v for v in values if isinstance(v, str)]
            if strs:
                self.categorical.setdefault(name, Counter()).update(strs)

    def merge(self, o: FieldHistograms) -> None:
        for name, c in o.numeric.items():
            self.numeric.setdefault(name, Counter()).update(c)
        for name, cc in o.categorical.items():
            self.categorical.setdefault(name, Counter()).update(cc)


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
