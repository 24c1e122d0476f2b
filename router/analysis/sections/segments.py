"""The ``segments`` section: per segment field and value, requests, error rates, latency,
agreement, positive-decision rates, accuracy and the primary metric's uplift; and the fairness
figures the gates read: the largest gap from the overall figure and the disparity ratio."""

from __future__ import annotations

from typing import Any

import numpy as np

from router.analysis import measures, stats
from router.analysis.accumulate import Accumulator
from router.analysis.jsonsafe import f
from router.analysis.policy import Policy
from router.analysis.sections.unit_view import UnitView


def segments_section(
    acc: Accumulator, policy: Policy, metrics: dict[str, Any], uv: UnitView
) -> dict[str, Any]:
    by_field: dict[str, list[dict[str, Any]]] = {}
    for (field_name, value), agg in acc.segments.tallies.items():
        row: dict[str, Any] = {"value": value, "requests": list(agg.requests)}
        row["error_rate"] = [
            f(agg.errors[i] / agg.requests[i]) if agg.requests[i] else None for i in (0, 1)
        ]
        row["latency_mean_ms"] = [f(agg.latency[i].mean) for i in (0, 1)]
        row["latency_p95_ms"] = [f(agg.latency_hist[i].quantile(0.95)) for i in (0, 1)]
        row["pairs"] = agg.pairs
        row["agreement"] = f(agg.agree / agg.pairs) if agg.pairs else None
        row["mean_abs_diff"] = (
            f(agg.abs_diff / agg.pairs) if agg.pairs and acc.kind in ("score", "value") else None
        )
        row["positive_rate"] = [
            f(agg.positives[i] / agg.predictions[i]) if agg.predictions[i] else None for i in (0, 1)
        ]
        row["predictions"] = list(agg.predictions)
        row["labelled"] = agg.labelled
        row["accuracy"] = [
            f(agg.correct[i] / agg.labelled) if agg.labelled else None for i in (0, 1)
        ]
        by_field.setdefault(field_name, []).append(row)
    pm = policy.primary_metric
    if pm is not None and pm.name in acc.specs and acc.specs[pm.name][0].per == "unit":
        spec = acc.specs[pm.name][0]
        per_seg: dict[tuple[str, str], list[list[float]]] = {}
        v, _t, x, combos = uv.arrays(pm.name, spec)
        for vi, xi, c in zip(v.tolist(), x.tolist(), combos.tolist(), strict=True):
            for item in acc.segments.combo_keys[c]:
                per_seg.setdefault(item, [[], []])[vi].append(xi)
        for rows_field, rows in by_field.items():
            for row in rows:
                vals = per_seg.get((rows_field, row["value"]))
                if vals:
                    row["primary_mean"] = [f(np.mean(a)) if a else None for a in vals]
                    row["primary_units"] = [len(a) for a in vals]
                    a0, a1 = np.asarray(vals[0]), np.asarray(vals[1])
                    if a0.size >= 2 and a1.size >= 2:
                        w = stats.welch(a0.mean(), a0.var(ddof=1), a0.size, a1.mean(),
                                        a1.var(ddof=1), a1.size, policy.alpha)  # fmt: skip
                        row["primary_uplift"] = {
                            "absolute": f(w.estimate),
                            "ci": w.ci.as_list(),
                            "p_value": f(w.pvalue),
                            "state": w.state,
                        }
    min_n = policy.segments.min_n
    gap = _segment_gap(acc, by_field, min_n, metrics)
    disparity = _disparity(by_field, min_n)
    for rows in by_field.values():
        rows.sort(key=lambda r: (-sum(r["requests"]), str(r["value"])))
        del rows[policy.segments.max_values :]
    return {"fields": by_field, "gap": gap, "disparity": disparity, "min_n": min_n}


def _segment_gap(
    acc: Accumulator,
    by_field: dict[str, list[dict[str, Any]]],
    min_n: int,
    metrics: dict[str, Any],
) -> dict[str, Any]:
    """Largest |segment - overall| of the challenger's accuracy (labelled pairs), else of the
    primary metric's challenger mean, else of the challenger's error rate."""
    q = acc.paired.quality
    candidates: list[tuple[str, Any, Any]] = []
    if q.n:
        overall = q.correct[1] / q.n
        candidates = [
            (fn, r, r["accuracy"][1])
            for fn, rows in by_field.items()
            for r in rows
            if r["labelled"] >= min_n
        ]
        metric = "challenger accuracy (label-joined)"
    else:
        overall = None
    if not candidates:
        rate = acc.errors[1] / acc.requests[1] if acc.requests[1] else None
        overall = rate
        candidates = [
            (fn, r, r["error_rate"][1])
            for fn, rows in by_field.items()
            for r in rows
            if r["requests"][1] >= min_n
        ]
        metric = "challenger error rate"
    best = None
    for fn, r, val in candidates:
        if val is None or overall is None:
            continue
        g = abs(val - overall)
        if best is None or g > best[0]:
            best = (g, fn, r["value"], val)
    if best is None:
        return {
            "metric": metric,
            "value": None,
            "state": "not_enough_data",
            "reason": f"no segment with at least {min_n} observations",
        }
    return {
        "metric": metric,
        "value": f(best[0]),
        "segment": f"{best[1]}={best[2]}",
        "segment_value": f(best[3]),
        "overall": f(overall),
        "state": "ok",
    }


def _disparity(by_field: dict[str, list[dict[str, Any]]], min_n: int) -> dict[str, Any]:
    worst = None
    for fn, rows in by_field.items():
        rates = [
            (r["positive_rate"][1], r["value"])
            for r in rows
            if r["predictions"][1] >= min_n and r["positive_rate"][1] is not None
        ]
        if len(rates) < 2:
            continue
        ratio = measures.disparity_ratio([x for x, _ in rates])
        if ratio is not None and (worst is None or ratio < worst[0]):
            lo = min(rates)
            hi = max(rates)
            worst = (ratio, fn, lo, hi)
    if worst is None:
        return {
            "value": None,
            "state": "not_enough_data",
            "reason": f"fewer than two segments with {min_n} challenger decisions",
        }
    return {
        "value": f(worst[0]),
        "field": worst[1],
        "lowest": {"value": worst[2][1], "rate": f(worst[2][0])},
        "highest": {"value": worst[3][1], "rate": f(worst[3][0])},
        "state": "ok",
        "method": "lowest over highest positive-decision rate of the challenger (four-fifths rule)",
    }
