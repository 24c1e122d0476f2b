"""The A/B/n parts of a report: ``counts.forced``, ``crossover``, and ``arms`` (several
challengers: SRM across all arms, every challenger against the champion, Holm across
challengers and metrics, a ranking and a decision per challenger). Pure.

Each challenger's comparison is the full two-arm report of its view
(:mod:`router.analysis.arms`); this section gathers them. **Multiplicity:** the family is every
(challenger, outcome metric) pair with a fixed-horizon p-value; Holm's step-down adjustment
over that family (``p_value_holm_family``) controls the family-wise error rate across
challengers and metrics at ``alpha``. A challenger whose own gates say *promote* keeps that
decision only when its primary metric (when the policy names one and the window has a p-value
for it: a shadow step has no live split) is significant after this adjustment, and it ranks
first among such challengers; the others *hold* with the reason. Only one challenger can
therefore be promoted from one report.

**Ranking:** challengers by their primary metric's relative uplift, best first (the direction
the policy calls better), those without a primary metric result last by name; guardrail
failures (decision *rollback*) rank after every other challenger.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import polars as pl

from router.analysis import proportions, stats
from router.analysis.arms import MAX_CROSSOVER_EXAMPLES, ArmSet
from router.analysis.jsonsafe import f
from router.analysis.policy import Policy


def forced_counts(arms: ArmSet) -> dict[str, Any]:
    return {
        "requests": sum(arms.forced.values()),
        "by_variant": dict(sorted(arms.forced.items())),
        "note": "requests that forced their variant (QA): left out of every statistic",
    }


def mirror_coverage(arms: ArmSet, reports: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Mirrored pairs per challenger, and the requests of units inside a mirror share that were
    not mirrored, by target and reason (``budget``: cut by unit hash to stay within the target's
    ``mirror_max_rps``; ``budget_burst``: cut by its token bucket; ``throttled``: the shadow
    guard; ``body_too_large``; ``not_queued``: the shadow queue was full)."""
    skipped: dict[str, dict[str, int]] = {}
    for (target, reason), n in sorted(arms.mirror_skipped.items()):
        skipped.setdefault(target, {})[reason] = n
    pairs = {n: rep["counts"]["mirrored_pairs"] for n, rep in reports.items()}
    out: dict[str, Any] = {"mirrored_pairs": pairs, "skipped": skipped}
    for target, reasons in skipped.items():
        got = pairs.get(target)
        if got is not None:
            want = got + sum(reasons.values())
            reasons_total = sum(reasons.values())
            out.setdefault("coverage", {})[target] = f(got / want) if want else None
            out.setdefault("budget_share", {})[target] = (
                f((reasons.get("budget", 0) + reasons.get("budget_burst", 0)) / want)
                if want and reasons_total
                else 0.0
            )
    out["note"] = (
        "coverage: mirrored pairs over the requests whose unit was in the mirror "
        "share; a budget cut chooses units by hash, so the pairs stay a random "
        "sample of units"
    )
    return out


def crossover_section(cross: pl.DataFrame) -> dict[str, Any]:
    combos: Counter[str] = Counter("+".join(v) for v in cross["variants"].to_list())
    examples = [
        {"unit": u, "variants": v} for u, v in cross.head(MAX_CROSSOVER_EXAMPLES).iter_rows()
    ]
    return {
        "units": cross.height,
        "by_variants": dict(sorted(combos.items())),
        "examples": examples,
        "excluded_from": "the SRM check and every unit-level statistic (metrics, segments); "
        "their requests stay in the request-level sections (latency, errors, pairs)",
        "causes": "a salt change, a config error, or a client sending different unit ids",
    }


def view_split(
    name: str, shares: dict[str, float] | None, split: float | None, single: bool
) -> float | None:
    """The split of challenger ``name``'s two-arm view: its share over its share plus the
    champion's (the champion's share is one minus every challenger's)."""
    if single and not shares:
        return split
    if not shares or name not in shares:
        return None
    champion = 1.0 - sum(shares.values())
    denom = shares[name] + champion
    return shares[name] / denom if denom > 0 else None


def _srm_across(
    arms: ArmSet, names: list[str], shares: dict[str, float] | None, policy: Policy
) -> dict[str, Any]:
    units = {"champion": arms.arms[names[0]].units.counts()[0]}
    for n in names:
        units[n] = arms.arms[n].units.counts()[1]
    base: dict[str, Any] = {"observed": units, "shares": shares}
    if not shares or any(n not in shares for n in names):
        return base | {
            "state": "not_applicable",
            "reason": "the challengers' split shares are unknown (pass --shares NAME=F,...)",
            "p_value": None,
            "sequential_p_value": None,
            "mismatch": False,
        }
    expected = [1.0 - sum(shares[n] for n in names), *(shares[n] for n in names)]
    res = proportions.srm_test(
        list(units.values()),
        expected,
        policy.srm.alpha,
        policy.srm.min_share_diff,
        policy.sequential.tau,
    )
    return base | {
        "state": res.state,
        "reason": {
            "ok": "units per variant match the configured shares"
            if not res.mismatch
            else "units per variant deviate from the configured shares",
            "not_enough_data": "no units in the window yet",
            "not_applicable": "an arm with a share of 0: nothing to compare",
        }[res.state],
        "statistic": f(res.statistic),
        "p_value": f(res.pvalue),
        "sequential_p_value": f(res.sequential_pvalue),
        "mismatch": res.mismatch,
        "max_share_diff": f(res.max_share_diff),
        "method": res.method,
    }


def arms_section(
    arms: ArmSet, reports: dict[str, dict[str, Any]], shares: dict[str, float] | None
) -> dict[str, Any]:
    names = list(reports)
    policy = arms.arms[names[0]].policy
    primary = policy.primary_metric.name if policy.primary_metric else None
    higher = True  # the policy's primary metric is judged by a lower bound on its uplift
    p_alpha = policy.primary_metric.alpha if policy.primary_metric else policy.alpha

    family: list[tuple[str, str, float | None]] = []
    for n, rep in reports.items():
        for metric, entry in rep["metrics"].items():
            up = entry.get("uplift") or {}
            family.append((n, metric, up.get("p_value")))
    adjusted = stats.holm([p for _, _, p in family])
    table = [
        {"challenger": n, "metric": m, "p_value": f(p), "p_value_holm_family": f(a)}
        for (n, m, p), a in zip(family, adjusted, strict=True)
    ]
    adj_of = {(n, m): f(a) for (n, m, _), a in zip(family, adjusted, strict=True)}

    def score(n: str) -> tuple[int, float, str]:
        rep = reports[n]
        rolled = rep["decision"]["action"] == "rollback"
        up = (rep["metrics"].get(primary) or {}).get("uplift") or {} if primary else {}
        rel = up.get("relative")
        if rel is None:
            return (2 if rolled else 1, 0.0, n)
        return (2 if rolled else 0, -rel if higher else rel, n)

    ranking = sorted(names, key=score)
    decisions: dict[str, dict[str, Any]] = {}
    winner: str | None = None
    for n in ranking:
        own = reports[n]["decision"]
        action, reasons = own["action"], list(own["reasons"])
        if action == "promote":
            adj = adj_of.get((n, primary)) if primary else None
            if primary and adj is not None and adj >= p_alpha:
                action = "continue"
                reasons.append(
                    f"{primary} not significant after Holm across the challengers "
                    f"and metrics (p = {adj})"
                )
            elif winner is not None:
                action = "hold"
                reasons.append(f"{winner} ranks higher; only one challenger is promoted")
            else:
                winner = n
        decisions[n] = {"action": action, "reasons": reasons}
    return {
        "challengers": names,
        "srm": _srm_across(arms, names, shares, policy),
        "comparisons": {
            n: {
                "split": rep["srm"].get("split"),
                "counts": {k: rep["counts"][k] for k in ("per_variant", "units", "mirrored_pairs")},
                "srm": {k: rep["srm"].get(k) for k in ("state", "p_value", "mismatch")},
                "metrics": {
                    m: {
                        k: (e.get("uplift") or {}).get(k)
                        for k in ("absolute", "relative", "ci", "p_value", "p_value_holm")
                    }
                    | {"p_value_holm_family": adj_of.get((n, m))}
                    for m, e in rep["metrics"].items()
                },
                "gates": [
                    {k: g.get(k) for k in ("name", "state", "passed", "reason")}
                    for g in rep["gates"]
                ],
                "decision": rep["decision"],
            }
            for n, rep in reports.items()
        },
        "multiple_testing": {
            "method": "Holm step-down over every (challenger, outcome metric) p-value",
            "alpha": policy.alpha,
            "family_size": sum(p is not None for _, _, p in family),
            "table": table,
        },
        "ranking": ranking,
        "ranked_by": f"relative uplift of {primary} ({'higher' if higher else 'lower'} is "
        "better); rolled-back challengers last"
        if primary
        else "name (no primary metric)",
        "decisions": decisions,
        "winner": winner,
    }
