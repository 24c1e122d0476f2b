"""Calibration by simulation (seeded): false-positive rates, peeking, coverage, SRM power.

CI-sized by default (about 20 s in all); ``ROUTER_FULL_SIM=1`` runs 10x the experiments for a
tighter check, e.g. ``ROUTER_FULL_SIM=1 python -m pytest tests/analysis/test_simulation.py``
(the older name ``ROUTER_SIM_FULL=1`` is accepted too).
"""

from __future__ import annotations

import math
import os

import numpy as np

from router.analysis import proportions, sample_size, stats

FULL = "1" in (os.environ.get("ROUTER_FULL_SIM"), os.environ.get("ROUTER_SIM_FULL"))
EXPERIMENTS = 10_000 if FULL else 1_000
ALPHA = 0.05


def _mc_se(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n)


def _arm_stats(x: np.ndarray) -> tuple[float, float, float]:
    return float(x.mean()), float(x.var(ddof=1)), float(x.size)


def test_aa_false_positive_rate_of_the_fixed_horizon_test() -> None:
    rng = np.random.default_rng(20261122)
    n = 2_000
    hits = 0
    for _ in range(EXPERIMENTS):
        a = rng.normal(1.0, 2.0, n)
        b = rng.normal(1.0, 2.0, n)
        p = stats.welch(*_arm_stats(a), *_arm_stats(b)).pvalue
        hits += p is not None and p < ALPHA
    rate = hits / EXPERIMENTS
    assert 0.035 <= rate <= 0.065, rate


def _peeking_rates(experiments: int, looks: int, seed: int) -> tuple[float, float]:
    """Share of A/A experiments ever declared significant over ``looks`` interim looks, by the
    naive fixed-horizon test and by the always-valid mSPRT p-value."""
    rng = np.random.default_rng(seed)
    per_look = 200
    naive = seq = 0
    for _ in range(experiments):
        a = rng.binomial(1, 0.1, per_look * looks).astype(float)
        b = rng.binomial(1, 0.1, per_look * looks).astype(float)
        hit_naive = hit_seq = False
        for k in range(1, looks + 1):
            m = k * per_look
            sa, sb = _arm_stats(a[:m]), _arm_stats(b[:m])
            w = stats.welch(*sa, *sb)
            hit_naive |= w.pvalue is not None and w.pvalue < ALPHA
            vd = sa[1] / sa[2] + sb[1] / sb[2]
            tau = 0.1 * math.sqrt((sa[1] + sb[1]) / 2)
            if w.estimate is not None and vd > 0:
                s = stats.msprt(w.estimate, vd, tau)
                hit_seq |= s.pvalue is not None and s.pvalue < ALPHA
        naive += hit_naive
        seq += hit_seq
    return naive / experiments, seq / experiments


def test_sequential_test_survives_20_peeks_and_naive_does_not() -> None:
    naive, seq = _peeking_rates(EXPERIMENTS, looks=20, seed=7)
    bound = ALPHA + 2 * _mc_se(ALPHA, EXPERIMENTS)
    assert seq <= bound, (seq, bound)
    # the harness works: peeking with a fixed-horizon test inflates false positives visibly
    assert naive > bound + 0.03, naive


def test_ci_coverage_of_welch_and_confidence_sequence() -> None:
    rng = np.random.default_rng(99)
    delta = 0.3
    cover_fixed = cover_seq = 0
    for _ in range(EXPERIMENTS):
        a = rng.exponential(2.0, 800)
        b = rng.exponential(2.0, 800) + delta
        sa, sb = _arm_stats(a), _arm_stats(b)
        w = stats.welch(*sa, *sb)
        assert w.ci.low is not None and w.ci.high is not None and w.estimate is not None
        cover_fixed += w.ci.low <= delta <= w.ci.high
        vd = sa[1] / sa[2] + sb[1] / sb[2]
        s = stats.msprt(w.estimate, vd, 0.1 * math.sqrt((sa[1] + sb[1]) / 2))
        assert s.ci.low is not None and s.ci.high is not None
        cover_seq += s.ci.low <= delta <= s.ci.high
    need = 1 - ALPHA - 2 * _mc_se(ALPHA, EXPERIMENTS)
    assert cover_fixed / EXPERIMENTS >= need
    assert cover_seq / EXPERIMENTS >= need


def test_power_on_a_known_effect_matches_the_design() -> None:
    """At the sample size the power formula asks for, the test detects the effect ~80% of runs."""
    p1, p2 = 0.10, 0.12
    n = math.ceil(sample_size.n_per_arm_proportions(p1, p2, ALPHA, 0.8))
    rng = np.random.default_rng(5)
    runs = EXPERIMENTS
    x1 = rng.binomial(n, p1, runs)
    x2 = rng.binomial(n, p2, runs)
    hits = sum(
        (proportions.two_proportion_ztest(a, n, b, n).pvalue or 1.0) < ALPHA
        for a, b in zip(x1.tolist(), x2.tolist(), strict=True)
    )
    assert abs(hits / runs - 0.8) <= 3 * _mc_se(0.8, runs), hits / runs


def test_srm_flags_a_505_495_split_configured_5050() -> None:
    rng = np.random.default_rng(1)
    runs = 1_000 if FULL else 300
    units = 500_000
    flagged = 0
    for _ in range(runs):
        ch = int(rng.binomial(units, 0.495))
        res = proportions.srm_test([ch, units - ch], [0.5, 0.5], alpha=0.001, min_share_diff=0.001)
        flagged += res.mismatch
    assert flagged / runs >= 0.99, flagged / runs


def test_srm_false_alarm_rate_on_a_correct_split() -> None:
    rng = np.random.default_rng(2)
    runs = 2_000
    alarms = 0
    for _ in range(runs):
        ch = int(rng.binomial(100_000, 0.5))
        alarms += proportions.srm_test([ch, 100_000 - ch], [0.5, 0.5]).mismatch
    assert alarms / runs <= 0.001 + 3 * _mc_se(0.001, runs)
