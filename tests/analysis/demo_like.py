"""A report like the demo's (a live split with a better challenger, mirrored pairs with labels,
a conversion metric per request as the primary metric, segments, a previous look to compare
against), built once per test session for the rendering tests."""

from __future__ import annotations

import functools
from typing import Any

from router.analysis import parse_policy
from router.analysis.accumulate import Accumulator
from router.analysis.compare import compare
from router.analysis.outcomes_index import OutcomeIndex
from router.analysis.report import report_from
from router.demo.synth import SynthSpec, dataset

POLICY = {
    "min_samples": 100,
    "primary_metric": {"name": "converted", "min_uplift": 0.0},
    "metrics": {"converted": {"type": "proportion", "per": "request"}},
    "label_metric": "label",
    "guardrails": {"max_psi": None},
}


def _report(recs: list[dict[str, Any]], outs: list[dict[str, Any]]) -> tuple[Any, Any]:
    policy = parse_policy(POLICY, "demo-like policy")
    oi = OutcomeIndex(policy.data_quality.max_metrics)
    oi.add_all(outs, "demo")
    acc = Accumulator(policy, oi, kind="score", experiment="demo")
    acc.add(recs)
    return report_from(acc, experiment="demo", split=0.5), acc


@functools.lru_cache(maxsize=1)
def demo_like() -> tuple[dict[str, Any], Accumulator]:
    """(report with a ``comparison`` to the first half of the window, its accumulator)."""
    spec = SynthSpec(experiment="demo", n=6000, units=800, conversion_uplift=0.04,
                     challenger_shift=0.3, start=1_796_030_966.9, seed=7)  # fmt: skip
    recs, outs = dataset(spec)
    half = recs[: len(recs) // 2]
    ids = {r["request_id"] for r in half}
    units = {r["unit"] for r in half}
    early = [o for o in outs if o.get("request_id") in ids
             or (o.get("request_id") is None and o.get("unit") in units)]  # fmt: skip
    prev, _ = _report(half, early)
    report, acc = _report(recs, outs)
    report["comparison"] = compare(report, prev)
    return report, acc
