"""Expected accuracy without labels (CBPE): against a direct computation, by simulation (the
realised accuracy of calibrated scores falls in the interval ~95% of the time; miscalibrated
scores are caught once labels arrive), and in the report before and after labels."""

from __future__ import annotations

import math
import os
import time
from typing import Any

import numpy as np
import pytest

from router.analysis import build_report
from router.analysis.cbpe import CbpeSums

FULL = "1" in (os.environ.get("ROUTER_FULL_SIM"), os.environ.get("ROUTER_SIM_FULL"))
T0 = time.time() - 3600


def test_sums_against_a_direct_computation() -> None:
    p = np.array([0.9, 0.2, 0.5, 0.7, np.nan, 1.2, 0.1])
    lab = np.array([1.0, 0.0, 0.0, np.nan, 1.0, 1.0, 1.0])
    s = CbpeSums()
    s.add(p, lab, 0.5)
    q = np.array([0.9, 0.8, 0.5, 0.7, 0.9])  # the NaN and the 1.2 are not scores
    assert s.n == 5 and s.q == pytest.approx(q.sum())
    assert s.qv == pytest.approx((q * (1 - q)).sum())
    # labelled: 0.9 -> 1 right, 0.2 -> 0 right, 0.5 -> 0 wrong (predicted positive), 0.1 -> 1 wrong
    assert (s.n_lab, s.correct_lab) == (4, 2)
    assert s.q_lab == pytest.approx(0.9 + 0.8 + 0.5 + 0.9)


def test_simulated_coverage_of_calibrated_scores_and_miscalibration() -> None:
    rng = np.random.default_rng(4)
    reps, n = (2000, 2000) if FULL else (400, 2000)
    inside = 0
    for _ in range(reps):
        p = rng.beta(2, 3, n)
        y = (rng.random(n) < p).astype(float)
        s = CbpeSums()
        s.add(p, y, 0.5)
        e, h = s.q / s.n, 1.96 * math.sqrt(s.qv) / s.n
        inside += e - h <= s.correct_lab / s.n_lab <= e + h
    assert 0.93 <= inside / reps <= 0.97
    # overconfident scores (the true probability is pulled halfway to 0.5): caught
    p = rng.beta(2, 3, 20_000)
    y = (rng.random(p.size) < 0.5 + (p - 0.5) / 2).astype(float)
    s = CbpeSums()
    s.add(p, y, 0.5)
    assert abs(s.correct_lab / s.n_lab - s.q / s.n) > 3 * math.sqrt(s.qv) / s.n


def _records(n: int, label_share: float, seed: int) -> tuple[list[Any], list[Any]]:
    rng = np.random.default_rng(seed)
    recs, outs = [], []
    for i in range(n):
        pc, ph = rng.beta(2, 3), rng.beta(3, 2)
        side = {"version": "1", "status": 200, "latency_ms": 5.0, "error": None}
        recs.append({"v": 1, "experiment": "e", "request_id": f"r{i}", "ts": T0 + i * 0.01,
                     "unit": f"u{i}", "bucket": 0, "served": "champion", "mirrored": True,
                     "segment": {}, "champion": side | {"prediction": float(pc)},
                     "challenger": side | {"prediction": float(ph)}, "contract": None})  # fmt: skip
        if rng.random() < label_share:
            y = float(rng.random() < pc)  # the champion is calibrated for this population
            outs.append({"v": 1, "experiment": "e", "request_id": f"r{i}", "metric": "label",
                         "value": y})  # fmt: skip
    return recs, outs


def test_report_shows_the_estimate_then_compares_with_labels() -> None:
    recs, _ = _records(3000, 0.0, seed=1)
    ea = build_report(recs, [], experiment="e")["expected_accuracy"]
    ch = ea["models"]["champion"]
    assert ea["state"] == "ok" and ch["state"] == "estimate_only" and ch["labelled"] is None
    preds = np.array([r["champion"]["prediction"] for r in recs])
    assert ch["expected"] == pytest.approx(np.where(preds >= 0.5, preds, 1 - preds).mean())
    recs, outs = _records(3000, 0.5, seed=2)
    ea = build_report(recs, outs, experiment="e")["expected_accuracy"]
    lab = ea["models"]["champion"]["labelled"]
    assert lab["n"] == pytest.approx(1500, abs=120)
    assert lab["consistent"] is True and ea["models"]["champion"]["state"] == "compared"
    # the challenger's scores are not calibrated to these labels: the comparison says so
    assert ea["models"]["challenger"]["state"] == "miscalibrated"
