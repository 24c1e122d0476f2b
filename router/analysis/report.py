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
from router.analysis.arms import ArmSet
from router.analysis.data_quality import data_quality_section
from router.analysis.frames import RECORD_SCHEMA, prepare_records, records_chunk
from router.analysis.gates.decision import evaluate
from router.analysis.outcomes_index import OutcomeIndex
from router.analysis.policy import Policy
from router.analysis.sections.arms import (
    arms_section,
    crossover_section,
    forced_counts,
    mirror_coverage,
    view_split,
)
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
    acc: Accumulator | ArmSet,
    *,
    experiment: str,
    split: float | None = None,
    earliest_available: float | None = None,
    reference: dict[str, Any] | None = None,
    shares: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The report of an accumulator, or of the challengers' views of an :class:`ArmSet`: then
    the top-level sections are the first challenger's comparison with the champion, plus
    ``counts.forced``, ``crossover`` and, with several challengers, ``arms``
    (:mod:`router.analysis.sections.arms`). ``shares``: each challenger's split share (A/B/n
    SRM); ``split``: the one challenger's."""
    if isinstance(acc, ArmSet):
        return _report_from_arms(acc, experiment, split, earliest_available, reference, shares)
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


def _report_from_arms(
    arms: ArmSet,
    experiment: str,
    split: float | None,
    earliest_available: float | None,
    reference: dict[str, Any] | None,
    shares: dict[str, float] | None,
) -> dict[str, Any]:
    cross = arms.mark_crossover()
    names = arms.names
    single = len(names) == 1
    reports = {
        n: report_from(
            arms.arms[n],
            experiment=experiment,
            split=view_split(n, shares, split, single),
            earliest_available=earliest_available,
            reference=reference,
        )
        for n in names
    }
    top = reports[names[0]]
    top["counts"]["forced"] = forced_counts(arms)
    top["counts"]["mirror_coverage"] = mirror_coverage(arms, reports)
    top["crossover"] = crossover_section(cross)
    if not single:
        top["arms"] = arms_section(arms, reports, shares)
        top["meta"]["arms"] = (
            f"top-level sections compare the first challenger ({names[0]}) with the champion; "
            "arms holds every challenger, the Holm family across them and their decisions"
        )
    return top


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
    shares: dict[str, float] | None = None,
    arms: list[str] | None = None,
) -> dict[str, Any]:
    """The whole analysis of in-memory records and outcomes (DESIGN.md schemas); with several
    challengers in the records, one comparison per challenger (see :func:`report_from`)."""
    policy = policy or Policy()
    oi = OutcomeIndex(policy.data_quality.max_metrics)
    oi.add_all(outcomes, experiment)
    kind = prediction_kind or policy.prediction_kind or "score"

    def make() -> Accumulator:
        return Accumulator(policy, oi, kind=kind, since=since, until=until, experiment=experiment)

    chunk, rejected = records_chunk(pairs)
    page = prepare_records(chunk, RECORD_SCHEMA)
    page.rejected.merge(rejected)
    aset = ArmSet(make, arms or (list(shares) if shares else None))
    aset.add_page(page)
    if aset.restart:  # challengers not known in advance: fold again with all of them
        aset = ArmSet(make, aset.restart_arms())
        aset.add_page(page)
    return report_from(
        aset,
        experiment=experiment,
        split=split,
        earliest_available=earliest_available,
        reference=reference,
        shares=shares,
    )
