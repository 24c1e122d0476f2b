"""The controller's seam to the analyzer: the :class:`Analyse` protocol, the default analyzer of a
policy file, and the verdict a report gives the state machine (:func:`verdict_from_report`)."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Protocol


class Analyse(Protocol):
    """Analyse one window: returns a report with ``decision``, ``gates`` and ``counts`` (and
    ``arms`` with several challengers; the controller then passes ``shares=`` too)."""

    def __call__(
        self,
        pairs: list[dict[str, Any]],
        outcomes: list[dict[str, Any]],
        *,
        experiment: str,
        split: float,
        since: float,
        until: float,
    ) -> dict[str, Any] | Awaitable[dict[str, Any]]: ...


def analyzer_from_policy(
    policy_path: str | None, redis_url: str | None = None, archive: str | None = None
) -> Analyse:
    """The default :class:`Analyse`: the analyzer with the loaded policy.

    With ``redis_url`` it streams the step's window from Redis itself (bounded memory however
    long the step; the ``pairs``/``outcomes`` arguments are then ignored and the controller
    does not read them, see ``streaming``); with ``archive`` too, the part of the window the
    streams no longer hold is read from the archive (``router archive``); without, it analyses
    the rows it is given."""
    from router import analysis
    from router.analysis.policy import Policy

    policy = analysis.load_policy(policy_path) if policy_path else Policy()

    def analyse(
        pairs: list[dict[str, Any]],
        outcomes: list[dict[str, Any]],
        *,
        experiment: str,
        split: float,
        since: float,
        until: float,
        shares: dict[str, float] | None = None,
    ) -> dict[str, Any]:
        if redis_url is not None:
            from router.analysis.run import Source, analyze

            src = Source(experiment, redis_url=redis_url, archive=archive, since=since,
                         until=until)  # fmt: skip
            kind = policy.prediction_kind or "score"
            return analyze(src, policy, kind=kind, split=split, shares=shares)
        report: dict[str, Any] = analysis.build_report(
            pairs,
            outcomes,
            experiment=experiment,
            policy=policy,
            split=split,
            since=since,
            until=until,
            shares=shares,
        )
        return report

    analyse.streaming = redis_url is not None  # type: ignore[attr-defined]
    return analyse


GATE_KEYS = (
    "name", "passed", "value", "threshold", "reason", "state", "ci", "p_value", "always_valid",
)  # fmt: skip


def verdict_from_report(report: dict[str, Any], since: float, until: float) -> dict[str, Any]:
    decision = report.get("decision") or {}
    return {
        "action": decision.get("action"),
        "reasons": list(decision.get("reasons", [])),
        "gates": [{k: g.get(k) for k in GATE_KEYS if k in g} for g in report.get("gates", [])],
        "counts": report.get("counts", {}),
        "window": {"since": since, "until": until},
        # several challengers: their decisions, ranking and winner (router.promotion.contest)
        "arms": {k: arms.get(k) for k in ("decisions", "ranking", "winner")}
        if (arms := report.get("arms"))
        else None,
    }
