"""The states of a gate and the decision rules that derive them (pure).

The rules (``*_state``) are vectorised functions of summary statistics and intervals, so the test
suite simulates exactly the code that decides (``tests/analyzer/test_gate_simulation.py``).
"""

from __future__ import annotations

import numpy as np

from router.analysis import sequential as sq

PASS = "pass"
FAIL = "fail"
INCONCLUSIVE = "inconclusive"
NOT_ENOUGH_DATA = "not_enough_data"
NOT_EVALUABLE = "not_evaluable"
NOT_APPLICABLE = "not_applicable"
WARN = "warn"
STATES = (PASS, FAIL, INCONCLUSIVE, NOT_ENOUGH_DATA, NOT_EVALUABLE, NOT_APPLICABLE, WARN)
WAITING = (INCONCLUSIVE, NOT_ENOUGH_DATA, NOT_EVALUABLE)


def interval_state(
    low: np.ndarray | float | None,
    high: np.ndarray | float | None,
    threshold: float,
    better: str,
) -> np.ndarray:
    """The state of a tolerance gate from an always-valid interval (vectorised; NaN or None
    marks a side that does not exist yet). ``better="lower"``: the quantity must stay at or
    below ``threshold``: fail when ``low > threshold``, pass when ``high <= threshold``.
    ``better="higher"``: it must stay at or above: fail when ``high < threshold``, pass when
    ``low >= threshold``. Otherwise inconclusive, or not enough data when the side that
    would decide it is missing."""
    lo = np.asarray(np.nan if low is None else low, float)
    hi = np.asarray(np.nan if high is None else high, float)
    if better == "lower":
        fail, ok = lo > threshold, hi <= threshold
        undecided_missing = np.isnan(hi) & ~fail
    else:
        fail, ok = hi < threshold, lo >= threshold
        undecided_missing = np.isnan(lo) & ~fail
    out = np.where(fail, FAIL, np.where(ok, PASS, INCONCLUSIVE)).astype(object)
    return np.where(undecided_missing, NOT_ENOUGH_DATA, out)


def paired_tolerance_state(
    n: np.ndarray | float,
    b: np.ndarray | float,
    c: np.ndarray | float,
    threshold: float,
    better: str,
    alpha: float,
) -> np.ndarray:
    """State of a tolerance gate on a paired difference of binary outcomes ``(c − b)/n``
    (``c``: pairs where only the challenger has the event, ``b``: only the champion): the
    always-valid tests of :func:`router.analysis.sequential.bounded_mean_reject` at the
    threshold, for ``D ∈ {−1, 0, 1}`` with ``Σ D = c − b`` and ``Σ D² = b + c``."""
    n = np.asarray(n, float)
    b, c = np.asarray(b, float), np.asarray(c, float)
    mean = np.where(n > 0, (c - b) / np.maximum(n, 1.0), 0.0)
    m2 = (b + c) - n * mean * mean
    above, below = sq.bounded_mean_reject(n, mean, m2, threshold, -1.0, 1.0, alpha)
    if better == "lower":
        fail, ok = above, below
    else:
        fail, ok = below, above
    out = np.where(fail, FAIL, np.where(ok, PASS, INCONCLUSIVE)).astype(object)
    return np.where(n > 0, out, NOT_ENOUGH_DATA)


def live_proportions_interval(
    x1: np.ndarray | float,
    n1: np.ndarray | float,
    x2: np.ndarray | float,
    n2: np.ndarray | float,
    alpha: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Always-valid interval of ``p2 − p1`` for two independent (or not: a union bound needs no
    independence) proportions: ``[L2 − U1, U2 − L1]`` from each arm's
    :func:`~router.analysis.sequential.proportion_cs` at α/2."""
    l1, u1 = sq.proportion_cs(x1, n1, alpha / 2)
    l2, u2 = sq.proportion_cs(x2, n2, alpha / 2)
    return l2 - u1, u2 - l1


def primary_state(
    low: np.ndarray | float | None, high: np.ndarray | float | None, min_uplift: float
) -> np.ndarray:
    """The primary metric (oriented so that higher is better): pass when the always-valid
    lower bound clears ``min_uplift``; fail (harm: rollback) when the whole interval is below 0;
    else inconclusive."""
    lo = np.asarray(np.nan if low is None else low, float)
    hi = np.asarray(np.nan if high is None else high, float)
    out = np.where(hi < 0, FAIL, np.where(lo > min_uplift, PASS, INCONCLUSIVE)).astype(object)
    return np.where(np.isnan(lo) | np.isnan(hi), NOT_EVALUABLE, out)


def state_of(x: np.ndarray) -> str:
    """The state of a single-element result of a rule."""
    return str(np.asarray(x).reshape(-1)[0])
