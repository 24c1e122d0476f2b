"""A metric's and a gate's numbers in their units (pure): proportions as percent and their
differences in percentage points, latencies in ms, shares as percent, p-values as p-values."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from router.analysis import fmt

Fmt = Callable[[Any], str]

# the gates' own words: what each checks, and the unit of its value and threshold
GATE_WHAT = {
    "min_samples": "enough units in the smaller arm",
    "srm": "units split as configured (sample ratio)",
    "latency_p95": "challenger p95 latency",
    "latency_regression": "challenger − champion p95 latency",
    "error_rate_delta": "challenger − champion error rate",
    "accuracy_drop": "challenger − champion accuracy",
    "rmse_increase": "challenger / champion RMSE − 1",
    "response_contract": "response fields broken by the challenger",
    "prediction_psi": "shift of the prediction distribution (PSI)",
    "input_psi": "shift of the inputs (PSI)",
    "segment_gap": "largest segment gap to the overall figure",
    "disparity_ratio": "lowest / highest positive rate across segments",
    "primary_metric": "uplift of the primary metric",
    "invalid_records": "invalid or conflicting records",
}


def is_proportion(metric: dict[str, Any] | None) -> bool:
    return bool(metric) and metric.get("type") == "proportion"  # type: ignore[union-attr]


def metric_fmts(metric: dict[str, Any] | None) -> tuple[Fmt, Fmt]:
    """(level, difference) formatters of an outcome metric: ``28.2%`` and ``+2.9 pp`` for a
    proportion, 3 significant digits otherwise."""
    if is_proportion(metric):
        return fmt.pct, fmt.pp
    return fmt.num, lambda v: fmt.signed(v)


def gate_fmt(gate: dict[str, Any], report: dict[str, Any]) -> Fmt:
    """The formatter of a gate's value, threshold and interval."""
    name = gate["name"]
    if name in ("latency_p95",):
        return fmt.ms
    if name == "latency_regression":
        return lambda v: fmt.signed(v, 3, lambda x, s: fmt.ms(x, s))
    if name in ("error_rate_delta", "accuracy_drop"):
        return fmt.pp
    if name in ("response_contract", "invalid_records", "rmse_increase"):
        return fmt.pct
    if name == "min_samples":
        return fmt.count
    if name == "srm":
        return fmt.pvalue
    if name == "primary_metric":
        pm = report.get("metrics", {}).get(report.get("meta", {}).get("primary_metric") or "")
        relative = pm is not None and pm.get("target_relative") and _relative_gate(gate)
        if relative:
            return lambda v: fmt.signed(v, 2, lambda x, s: fmt.pct(x, s))
        return metric_fmts(pm)[1]
    return fmt.num


def _relative_gate(gate: dict[str, Any]) -> bool:
    return "(relative)" in gate.get("reason", "")


def gate_limit(gate: dict[str, Any], report: dict[str, Any]) -> str:
    """``≤ +50 ms``, ``≥ −2 pp``, ``≥ 300``: the threshold with the side it holds on."""
    t = gate.get("threshold")
    if t is None:
        return fmt.NA
    f = gate_fmt(gate, report)
    better = gate.get("better")
    name = gate["name"]
    if name == "srm":
        return f"p ≥ {fmt.num(t)}"
    if name in ("min_samples", "disparity_ratio") or better == "higher":
        return f"≥ {f(t)}" if name != "primary_metric" else f"> {f(t)}"
    return f"≤ {f(t)}"
