"""Drift tests chosen by sample size, as Evidently chooses them (pure functions).

A hypothesis test on a large sample flags trivial shifts (a KS p-value is tiny at n = 10^6 for a
shift no one cares about); a distance with a threshold says how large the shift is. So, by the
size of the reference sample (Evidently's defaults):

* numeric, reference n <= ``small_n`` (1000): two-sample Kolmogorov-Smirnov, drift when
  p < ``alpha`` (0.05); above: the Wasserstein distance normalised by the reference's standard
  deviation, drift when >= ``wasserstein_threshold`` (0.1);
* categorical, reference n <= ``small_n``: Pearson's chi-square on the category counts, drift
  when p < ``alpha``; above: the Jensen-Shannon distance, drift when >= ``js_threshold`` (0.1).

Both sides may be histograms on shared bins (the analyzer's captured fields are binned): KS
then takes the largest CDF gap at the bin edges (exact when the bins are the values, a lower
bound otherwise) with the asymptotic two-sample p-value; the Wasserstein distance is the area
between the binned CDFs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as st

from router.analysis import measures
from router.analysis.jsonsafe import f


@dataclass(frozen=True, slots=True)
class DriftTest:
    method: str  # "ks" | "wasserstein" | "chi_square" | "jensen_shannon"
    statistic: float | None
    p_value: float | None
    threshold: float
    drift: bool | None
    reference_n: int
    current_n: int

    def as_dict(self) -> dict[str, object]:
        return {"method": self.method, "statistic": f(self.statistic), "p_value": f(self.p_value),
                "threshold": self.threshold, "drift": self.drift,
                "reference_n": self.reference_n, "current_n": self.current_n}  # fmt: skip


@dataclass(frozen=True, slots=True)
class DriftRules:
    small_n: int = 1000
    alpha: float = 0.05
    wasserstein_threshold: float = 0.1
    js_threshold: float = 0.1


def numeric_binned(
    values: np.ndarray, ref_counts: np.ndarray, cur_counts: np.ndarray, rules: DriftRules
) -> DriftTest:
    """Numeric drift from counts on shared bins whose representative values are ``values``
    (sorted ascending)."""
    rn, cn = float(ref_counts.sum()), float(cur_counts.sum())
    if rn <= 0 or cn <= 0:
        method = "ks" if rn <= rules.small_n else "wasserstein"
        thr = rules.alpha if method == "ks" else rules.wasserstein_threshold
        return DriftTest(method, None, None, thr, None, int(rn), int(cn))
    fr, fc = np.cumsum(ref_counts) / rn, np.cumsum(cur_counts) / cn
    if rn <= rules.small_n:
        d = float(np.max(np.abs(fr - fc)))
        en = rn * cn / (rn + cn)
        p = float(st.kstwobign.sf(d * math.sqrt(en))) if d > 0 else 1.0
        return DriftTest("ks", d, min(p, 1.0), rules.alpha, p < rules.alpha, int(rn), int(cn))
    mean = float((values * ref_counts).sum() / rn)
    sd = math.sqrt(max(float((ref_counts * (values - mean) ** 2).sum() / rn), 0.0))
    w = float(np.sum(np.abs(fr - fc)[:-1] * np.diff(values))) if values.size > 1 else 0.0
    wn = w / sd if sd > 0 else (0.0 if w == 0 else math.inf)
    return DriftTest("wasserstein", wn, None, rules.wasserstein_threshold,
                     wn >= rules.wasserstein_threshold, int(rn), int(cn))  # fmt: skip


def numeric_samples(ref: np.ndarray, cur: np.ndarray, rules: DriftRules) -> DriftTest:
    """Numeric drift from raw samples (exact KS, or the Wasserstein distance / reference SD)."""
    rn, cn = int(ref.size), int(cur.size)
    if rn < 2 or cn < 2:
        method = "ks" if rn <= rules.small_n else "wasserstein"
        thr = rules.alpha if method == "ks" else rules.wasserstein_threshold
        return DriftTest(method, None, None, thr, None, rn, cn)
    if rn <= rules.small_n:
        ks = st.ks_2samp(ref, cur)
        p = float(ks.pvalue)
        return DriftTest("ks", float(ks.statistic), p, rules.alpha, p < rules.alpha, rn, cn)
    sd = float(np.std(ref))
    w = float(st.wasserstein_distance(ref, cur))
    wn = w / sd if sd > 0 else (0.0 if w == 0 else math.inf)
    return DriftTest("wasserstein", wn, None, rules.wasserstein_threshold,
                     wn >= rules.wasserstein_threshold, rn, cn)  # fmt: skip


def from_statistics(
    ref_n: int, cur_n: int, ks: float, ks_p: float, w_norm: float | None, rules: DriftRules
) -> DriftTest:
    """:func:`numeric_samples` from a KS result and a normalised Wasserstein distance already
    computed on the same samples (no second pass over them)."""
    if ref_n <= rules.small_n:
        return DriftTest("ks", ks, ks_p, rules.alpha, ks_p < rules.alpha, ref_n, cur_n)
    drift = None if w_norm is None else w_norm >= rules.wasserstein_threshold
    return DriftTest("wasserstein", w_norm, None, rules.wasserstein_threshold, drift, ref_n,
                     cur_n)  # fmt: skip


def categorical(ref_counts: np.ndarray, cur_counts: np.ndarray, rules: DriftRules) -> DriftTest:
    """Categorical drift from counts per category (same categories, same order)."""
    rn, cn = float(ref_counts.sum()), float(cur_counts.sum())
    if rn <= rules.small_n:
        if rn <= 0 or cn <= 0:
            return DriftTest("chi_square", None, None, rules.alpha, None, int(rn), int(cn))
        table = np.vstack([ref_counts, cur_counts])
        table = table[:, table.sum(axis=0) > 0]
        if table.shape[1] < 2:
            return DriftTest("chi_square", 0.0, 1.0, rules.alpha, False, int(rn), int(cn))
        res = st.chi2_contingency(table, correction=False)
        p = float(res.pvalue)
        return DriftTest("chi_square", float(res.statistic), p, rules.alpha, p < rules.alpha,
                         int(rn), int(cn))  # fmt: skip
    if cn <= 0:
        return DriftTest("jensen_shannon", None, None, rules.js_threshold, None, int(rn), 0)
    js = measures.jensen_shannon(ref_counts, cur_counts)
    return DriftTest("jensen_shannon", js, None, rules.js_threshold, js >= rules.js_threshold,
                     int(rn), int(cn))  # fmt: skip
