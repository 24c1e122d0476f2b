"""Data quality: what was read and not analysed, and why; which metrics the policy names that
the data never mentions (pure: an accumulator in, a report section and gates out).

The report's ``data_quality`` section names every record that did not count: invalid lines by
field and kind with their first few places (file lines or stream ids), request ids reused with
other contents (conflicts), records of other experiments, records outside the window, segment
values folded into "other", invalid outcome rows. Its gates:

* ``invalid_records`` (kind ``data``): invalid records and conflicts over all records read; above
  ``data_quality.max_invalid_share`` (default 1%) the decision is hold: the data needs a human.
* a policy metric absent from the data: a warning in the report (``router analyze --strict``
  turns warnings into an error), and the gate that needs it is never a pass (the quality gates
  of :mod:`router.analysis.gates.quality` say ``not_evaluable`` without labels; a row that is
  missing is added as ``not_evaluable``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from router.analysis.accumulate import Accumulator
    from router.analysis.policy import Policy


def _f(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _quality_gate(kind: str, policy: Policy) -> tuple[str, float] | None:
    """The label-joined guardrail of this prediction kind, when the policy sets it."""
    g = policy.guardrails
    if kind == "value":
        return None if g.max_rmse_increase is None else ("rmse_increase", g.max_rmse_increase)
    return None if g.max_accuracy_drop is None else ("accuracy_drop", -g.max_accuracy_drop)


def missing_metrics(acc: Accumulator, policy: Policy) -> list[dict[str, Any]]:
    """Outcome metrics the policy names (``label_metric``, ``primary_metric``, ``metrics``)
    that no outcome row of this window has, with the gate each one leaves unevaluable."""
    present = acc.outcomes.metrics
    out: list[dict[str, Any]] = []
    label = _quality_gate(acc.kind, policy)
    named = "label_metric" in policy.model_fields_set
    if (label is not None or named) and policy.label_metric not in present:
        out.append({"role": "label_metric", "name": policy.label_metric,
                    "gate": label[0] if label else None,
                    "threshold": label[1] if label else None})  # fmt: skip
    pm = policy.primary_metric
    if pm is not None and pm.name not in present:
        out.append({"role": "primary_metric", "name": pm.name, "gate": "primary_metric",
                    "threshold": pm.min_uplift})  # fmt: skip
    for name in policy.metrics:
        if name not in present and (pm is None or name != pm.name):
            out.append({"role": f"metrics.{name}", "name": name, "gate": None, "threshold": None})
    return out


def data_quality_section(acc: Accumulator, policy: Policy) -> dict[str, Any]:
    """The ``data_quality`` report section."""
    other = sum(acc.other_experiments.values())
    read = acc.records + acc.invalid + acc.duplicates + acc.conflicts + acc.outside_window + other
    share = (acc.invalid + acc.conflicts) / read if read else None
    span = acc.outside_span
    oi = acc.outcomes
    present = sorted(oi.metrics)
    missing = missing_metrics(acc, policy)
    warnings = []
    for m in missing:
        what = f"policy {m['role']} names outcome metric {m['name']!r}, which no outcome in the "
        seen = ", ".join(repr(x) for x in present[:10]) if present else "none"
        warnings.append(f"{what}data has (metrics present: {seen})"
                        + (f"; {m['gate']} cannot be evaluated" if m["gate"] else ""))  # fmt: skip
    return {
        "records": {
            "read": read,
            "invalid": acc.invalid,
            "invalid_share": _f(share),
            "reasons": acc.rejected.rows(),
            "conflicts": {"count": acc.conflicts, "examples": list(acc.conflict_examples)},
            "outside_window": {
                "count": acc.outside_window,
                "first_ts": span[0] if span else None,
                "last_ts": span[1] if span else None,
            },
            "other_experiments": dict(acc.other_experiments.most_common()),
        },
        "outcomes": {
            "invalid": oi.invalid,
            "reasons": oi.rejected.rows(),
            "other_experiments": dict(oi.other_experiments.most_common()),
        },
        "segments": {
            "max_tracked_values": policy.segments.max_tracked_values,
            "max_fields": policy.segments.max_fields,
            "folded_records": dict(acc.segments.overflow.most_common()),
        },
        "missing_metrics": missing,
        "warnings": warnings,
        "max_invalid_share": policy.data_quality.max_invalid_share,
    }


def _reasons_text(records: dict[str, Any], top: int = 3) -> str:
    parts = [f"{r['field']}: {r['kind']} ×{r['count']}" for r in records["reasons"][:top]]
    if records["conflicts"]["count"]:
        parts.append(f"reused request ids with other contents ×{records['conflicts']['count']}")
    return "; ".join(parts)


def _row(name: str, kind: str, state: str, value: float | None, threshold: float | None,
         reason: str, null_hypothesis: str, test: str) -> dict[str, Any]:  # fmt: skip
    """A gate row as :func:`router.analysis.gates.rows.row` writes them (descriptive: no
    interval)."""
    return {"name": name, "kind": kind, "state": state, "passed": state == "pass",
            "significant": False, "value": value, "threshold": threshold, "reason": reason,
            "null_hypothesis": null_hypothesis, "test": test, "always_valid": False, "ci": None,
            "better": "lower" if kind == "data" else None, "p_value": None}  # fmt: skip


def _invalid_gate(dq: dict[str, Any]) -> dict[str, Any]:
    r = dq["records"]
    share, limit = r["invalid_share"], dq["max_invalid_share"]
    bad = r["invalid"] + r["conflicts"]["count"]
    if share is None:
        state, reason = "not_applicable", "no records read"
    else:
        state = "pass" if share <= limit else "fail"
        reason = f"{share:.1%} of {r['read']} records invalid or conflicting ({bad}" + (
            f": {_reasons_text(r)})" if bad else ")"
        )
    return _row("invalid_records", "data", state, share, limit, reason,
                "invalid records and reused request ids are at most the share limit of the "
                "records read", "share of the records read (descriptive)")  # fmt: skip


def data_quality_gates(
    report: dict[str, Any], policy: Policy, gates: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The gates of the data-quality section to add to ``gates``: the invalid share; and, for
    a guardrail whose metric is absent from the data and that ``gates`` lacks, a
    ``not_evaluable`` row. A row of ``gates`` that passed although its metric is absent (it
    cannot have) is made ``not_evaluable``, so an absent metric is never a pass."""
    dq = report.get("data_quality")
    if dq is None:
        return []
    out = [_invalid_gate(dq)]
    by_name = {g["name"]: g for g in gates}
    for m in dq["missing_metrics"]:
        if m["gate"] is None:
            continue
        why = (f"{m['role']} {m['name']!r}: no outcome of that metric in the data, so the "
               "gate cannot be evaluated")  # fmt: skip
        have = by_name.get(m["gate"])
        if have is None:
            out.append(_row(m["gate"], "guardrail", "not_evaluable", None, m["threshold"], why,
                            f"the guardrail on {m['name']!r} holds", "none: no data"))  # fmt: skip
        elif have["state"] == "pass":
            have.update(state="not_evaluable", passed=False, significant=False, reason=why)
    return out


def empty_window_decision(report: dict[str, Any]) -> dict[str, Any]:
    """The decision for a window without valid records: hold when the data is mostly invalid,
    else continue, saying where the records were (outside the window, another experiment)."""
    reasons = ["not enough data: no records in the window"]
    dq = report.get("data_quality")
    if dq is None:
        return {"action": "continue", "reasons": reasons}
    gate = _invalid_gate(dq)
    if gate["state"] == "fail":
        return {"action": "hold", "reasons": [f"invalid_records failed: {gate['reason']}"]}
    r = dq["records"]
    out = r["outside_window"]
    if out["count"]:
        reasons.append(f"{out['count']} records outside it (ts {out['first_ts']:.3f} .. "
                       f"{out['last_ts']:.3f})")  # fmt: skip
    if r["other_experiments"]:
        names = ", ".join(f"{k} ({n})" for k, n in r["other_experiments"].items())
        reasons.append(f"records of other experiments: {names}")
    return {"action": "continue", "reasons": reasons}
