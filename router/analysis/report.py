"""Turn an :class:`~router.analysis.accumulate.Accumulator` into the DESIGN.md report (pure).

Top-level keys: ``experiment, window, counts, srm, latency, errors, divergence, noise_floor,
quality, expected_accuracy, metrics, segments, drift, data_quality, gates, decision, meta``.
Every number is finite or ``null``; every statistic that cannot be computed says why in a
``state`` field. Each section is computed by its module in :mod:`router.analysis.sections`
(``data_quality`` by :mod:`router.analysis.data_quality`); this module assembles them in the
report's key order, then the gates and the decision (:mod:`router.analysis.gates`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from router.analysis.accumulate import Accumulator
from router.analysis.data_quality import data_quality_section
from router.analysis.gates.decision import evaluate
from router.analysis.outcomes_index import OutcomeIndex
from router.analysis.policy import Policy
from router.analysis.sections.counts import counts_section, srm_section, window_section
from router.analysis.sections.divergence import divergence_section
from router.analysis.sections.drift import drift_section
from router.analysis.sections.errors import errors_section
from router.analysis.sections.expected_accuracy import expected_accuracy_section
from router.analysis.sections.latency import latency_section
from router.analysis.sections.metrics import metrics_section
from router.analysis.sections.noise_floor import noise_floor_section
from router.analysis.sections.quality import quality_section
from router.analysis.sections.segments import segments_section
from router.analysis.sections.srm_segments import srm_by_segment
from router.analysis.sections.unit_view import UnitView

REPORT_VERSION = 1


def report_from(
    acc: Accumulator,
    *,
    experiment: str,
    split: float | None = None,
    earliest_available: float | None = None,
    reference: dict[str, Any] | None = None,
) -> dict[str, Any]:
    policy = acc.policy
    # the quality section (its AUC bootstrap is most of the report's time) runs beside the
    # others: numpy releases the GIL in most of it
    with ThreadPoolExecutor(1, thread_name_prefix="report-quality") as pool:
        quality = pool.submit(quality_section, acc, policy)
        uv = UnitView(acc)
        report: dict[str, Any] = {
            "version": REPORT_VERSION,
            "experiment": experiment,
            "window": window_section(acc, earliest_available),
            "counts": counts_section(acc, uv.joined, uv.before_exposure),
            "srm": srm_section(acc, policy, split),
            "latency": latency_section(acc, policy.alpha, policy.sequential.tau),
            "errors": errors_section(acc, policy.alpha),
            "divergence": divergence_section(acc, policy),
            "noise_floor": None,
            "quality": None,  # (keeps the key order)
        }
        report["noise_floor"] = noise_floor_section(acc, policy, report["divergence"])
        if policy.srm.by_segment:
            report["srm"]["by_segment"] = srm_by_segment(acc, policy, split, uv)
        metrics = metrics_section(acc, policy, uv)
        report["quality"] = quality.result()
    report["expected_accuracy"] = expected_accuracy_section(acc, policy)
    report["metrics"] = metrics
    report["segments"] = segments_section(acc, policy, report["metrics"], uv)
    report["drift"] = drift_section(acc, policy, reference)
    report["data_quality"] = data_quality_section(acc, policy)
    gates, decision = evaluate(report, policy)
    report["gates"] = gates
    report["decision"] = decision
    report["meta"] = {
        "generated_at": time.time(),
        "prediction_kind": acc.kind,
        "alpha": policy.alpha,
        "power": policy.power,
        "primary_metric": policy.primary_metric.name if policy.primary_metric else None,
        "multiple_testing": "Holm step-down over the outcome metrics' fixed-horizon p-values "
        "(p_value_holm); the label metric is analysed in quality only",
        "sequential": f"mSPRT normal mixture, tau = {policy.sequential.tau} x pooled SD (per "
        "unit); gates use always-valid intervals (see each gate's test); this report is one "
        "look: the promotion controller keeps the running intersection across its looks",
    }
    return report


def build_report(
    pairs: Iterable[dict[str, Any]],
    outcomes: Iterable[dict[str, Any]],
    *,
    experiment: str,
    policy: Policy | None = None,
    split: float | None = None,
    since: float | None = None,
    until: float | None = None,
    prediction_kind: str | None = None,
    earliest_available: float | None = None,
    reference: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The whole analysis of in-memory records and outcomes (DESIGN.md schemas)."""
    policy = policy or Policy()
    oi = OutcomeIndex(policy.data_quality.max_metrics)
    oi.add_all(outcomes, experiment)
    acc = Accumulator(
        policy,
        oi,
        kind=prediction_kind or policy.prediction_kind or "score",
        since=since,
        until=until,
        experiment=experiment,
    )
    acc.add(pairs)
    return report_from(
        acc,
        experiment=experiment,
        split=split,
        earliest_available=earliest_available,
        reference=reference,
    )
