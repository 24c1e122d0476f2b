"""Descriptive measures (pure, no test): agreement of two models (Cohen's kappa, ROC AUC with a
paired bootstrap of its difference), distribution shift (PSI, Jensen-Shannon distance) and the
disparity ratio of positive decisions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats as st
from scipy.special import rel_entr

from router.analysis.stats import Interval


def cohen_kappa(confusion: np.ndarray) -> float | None:
    """Cohen's kappa of a square confusion matrix (rows champion, columns challenger)."""
    n = float(confusion.sum())
    if n == 0:
        return None
    po = float(np.trace(confusion)) / n
    pe = float((confusion.sum(0) * confusion.sum(1)).sum()) / (n * n)
    if pe >= 1.0:
        return 1.0 if po >= 1.0 else None
    return (po - pe) / (1 - pe)


def psi(
    reference: Sequence[float] | np.ndarray,
    current: Sequence[float] | np.ndarray,
    eps: float = 1e-4,
) -> float | None:
    """Population stability index ``Σ (c - r) ln(c / r)`` over bin shares; empty bins are
    filled with ``eps`` (then renormalised) so the index stays finite."""
    r = np.asarray(reference, dtype=float)
    c = np.asarray(current, dtype=float)
    if r.sum() <= 0 or c.sum() <= 0:
        return None
    r = np.maximum(r / r.sum(), eps)
    c = np.maximum(c / c.sum(), eps)
    r, c = r / r.sum(), c / c.sum()
    return float(np.sum((c - r) * np.log(c / r)))


def psi_band(value: float | None) -> str:
    """The usual reading of a PSI: < 0.1 stable, 0.1–0.25 moderate shift, ≥ 0.25 major shift."""
    if value is None:
        return "unknown"
    return "stable" if value < 0.1 else "moderate" if value < 0.25 else "major"


def auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC by the Mann-Whitney rank statistic (ties count one half)."""
    y = labels.astype(bool)
    npos = int(y.sum())
    nneg = y.size - npos
    if npos == 0 or nneg == 0:
        return None
    ranks = st.rankdata(scores)
    return float((ranks[y].sum() - npos * (npos + 1) / 2) / (npos * nneg))


def _weighted_auc(group: np.ndarray, ngroups: int, y: np.ndarray, w: np.ndarray) -> float | None:
    """AUC with case weights ``w`` over scores pre-grouped into tied, ascending ``group`` ids."""
    wp, wn = w * y, w * (1 - y)
    tp, tn = wp.sum(), wn.sum()
    if tp <= 0 or tn <= 0:
        return None
    neg = np.bincount(group, weights=wn, minlength=ngroups)
    pos = np.bincount(group, weights=wp, minlength=ngroups)
    below = np.cumsum(neg) - neg
    return float((pos * (below + 0.5 * neg)).sum() / (tp * tn))


def paired_bootstrap_auc_diff(
    labels: np.ndarray,
    s1: np.ndarray,
    s2: np.ndarray,
    resamples: int = 500,
    alpha: float = 0.05,
    seed: int = 20261122,
) -> tuple[float | None, Interval]:
    """AUC(s2) - AUC(s1) on the same labelled requests, with a paired percentile bootstrap CI.

    Each of ``resamples`` draws takes n requests with replacement (counts of n uniform draws from
    numpy's PCG64 seeded with ``seed``) and recomputes both AUCs on the same draw; scores are ranked
    once, so a draw costs O(n)."""
    y = labels.astype(float)
    a1, a2 = auc(labels, s1), auc(labels, s2)
    if a1 is None or a2 is None:
        return None, Interval(None, None)
    u1, g1 = np.unique(s1, return_inverse=True)
    u2, g2 = np.unique(s2, return_inverse=True)
    rng = np.random.default_rng(seed)
    n = y.size
    diffs = []
    for _ in range(resamples):
        w = np.bincount(rng.integers(0, n, n), minlength=n).astype(float)
        b1 = _weighted_auc(g1, u1.size, y, w)
        b2 = _weighted_auc(g2, u2.size, y, w)
        if b1 is not None and b2 is not None:
            diffs.append(b2 - b1)
    if len(diffs) < 10:
        return a2 - a1, Interval(None, None)
    lo, hi = np.quantile(diffs, [alpha / 2, 1 - alpha / 2])
    return a2 - a1, Interval(float(lo), float(hi))


def jensen_shannon(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon distance (natural log) of two histograms, as
    ``scipy.spatial.distance.jensenshannon`` (whose module takes 0.1 s to import)."""
    p = np.asarray(p, dtype=float) / np.sum(p)
    q = np.asarray(q, dtype=float) / np.sum(q)
    m = (p + q) / 2
    return float(np.sqrt(max((rel_entr(p, m).sum() + rel_entr(q, m).sum()) / 2, 0.0)))


def disparity_ratio(rates: Sequence[float]) -> float | None:
    """Lowest positive-decision rate over the highest (the four-fifths rule wants >= 0.8)."""
    rs = [r for r in rates if r is not None]
    if len(rs) < 2 or max(rs) <= 0:
        return None
    return min(rs) / max(rs)
