"""The ``expected_accuracy`` section: each model's accuracy estimated from its calibrated scores
without labels (CBPE, :mod:`router.analysis.cbpe`), and, where labels have arrived, the
realised accuracy beside the expectation for the same predictions."""

from __future__ import annotations

import math
from typing import Any

from scipy import stats as st

from router.analysis.accumulate import VARIANTS, Accumulator
from router.analysis.cbpe import CbpeSums
from router.analysis.jsonsafe import f
from router.analysis.policy import Policy


def _model(s: CbpeSums, z: float) -> dict[str, Any]:
    if not s.n:
        return {"n": 0, "expected": None, "ci": [None, None], "labelled": None}
    e = s.q / s.n
    h = z * math.sqrt(s.qv) / s.n
    out: dict[str, Any] = {"n": s.n, "expected": f(e), "ci": [f(max(e - h, 0.0)),
                                                              f(min(e + h, 1.0))]}  # fmt: skip
    if not s.n_lab:
        out["labelled"] = None
        out["state"] = "estimate_only"
        return out
    el = s.q_lab / s.n_lab
    hl = z * math.sqrt(s.qv_lab) / s.n_lab
    realised = s.correct_lab / s.n_lab
    inside = el - hl <= realised <= el + hl
    out["labelled"] = {
        "n": s.n_lab,
        "expected": f(el),
        "ci": [f(max(el - hl, 0.0)), f(min(el + hl, 1.0))],
        "realised": f(realised),
        "difference": f(realised - el),
        "consistent": bool(inside),
    }
    out["state"] = "compared" if inside else "miscalibrated"
    return out


def expected_accuracy_section(acc: Accumulator, policy: Policy) -> dict[str, Any]:
    if acc.kind != "score":
        return {"state": "not_applicable", "reason": f"no CBPE for {acc.kind} predictions"}
    t = acc.thresholds[0] if acc.thresholds else 0.5
    z = float(st.norm.ppf(1 - policy.alpha / 2))
    models = {VARIANTS[i]: _model(acc.cbpe[i], z) for i in (0, 1)}
    n = sum(m["n"] for m in models.values())
    return {
        "state": "ok" if n else "not_enough_data",
        "threshold": t,
        "models": models,
        "method": "CBPE (NannyML): expected accuracy = mean of P(decision right) = p or 1 - p "
        "at the threshold, assuming calibrated scores; interval: the Poisson-binomial SD of the "
        "realised accuracy; with labels, realised vs expected on the same predictions "
        "('miscalibrated' when outside the interval)",
    }
