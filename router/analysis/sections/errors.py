"""The ``errors`` section: error rates per variant (Wilson intervals), the live split's difference
and the paired difference on the same mirrored requests (score intervals, McNemar)."""

from __future__ import annotations

from typing import Any

from router.analysis import proportions
from router.analysis.accumulate import VARIANTS, Accumulator
from router.analysis.jsonsafe import f
from router.analysis.stats import DiffResult, TestResult


def paired_difference(pd: DiffResult, mc: TestResult) -> dict[str, Any]:
    """The interval and test entries of a paired difference of proportions (Tango's score test,
    McNemar's beside it), as the errors and quality sections write them."""
    return {
        "ci": pd.ci.as_list(),
        "p_value": f(pd.pvalue),
        "method": pd.method + " (at a difference of 0: McNemar's chi-square without "
        "continuity correction)",
        "mcnemar": {
            "statistic": f(mc.statistic),
            "p_value": f(mc.pvalue),
            "method": mc.method,
        },
    }


def errors_section(acc: Accumulator, alpha: float) -> dict[str, Any]:
    per = {}
    for v in (0, 1):
        n, e = acc.requests[v], acc.errors[v]
        per[VARIANTS[v]] = {
            "n": n,
            "errors": e,
            "rate": f(e / n) if n else None,
            "ci": proportions.wilson_interval(e, n, alpha).as_list(),
            "status_classes": dict(sorted(acc.status_classes[v].items())),
        }
    live = proportions.proportion_diff(
        acc.errors[0], acc.requests[0], acc.errors[1], acc.requests[1], alpha
    )
    pe = acc.paired.errors
    n = int(pe.sum())
    b, c = int(pe[1, 0]), int(pe[0, 1])  # champion-only errors, challenger-only errors
    paired: dict[str, Any] = {
        "n": n,
        "state": "not_enough_data" if n < 1 else "ok",
        "discordant": {"champion_only": b, "challenger_only": c},
    }
    if n:
        pd = proportions.paired_proportion_diff(b, c, n, alpha)
        mc = proportions.mcnemar(c, b)
        paired |= {
            "champion_rate": f((pe[1, 0] + pe[1, 1]) / n),
            "challenger_rate": f((pe[0, 1] + pe[1, 1]) / n),
            "delta": f(pd.estimate),
            **paired_difference(pd, mc),
        }
    return {
        "per_variant": per,
        "live_delta": {
            "estimate": f(live.estimate),
            "ci": live.ci.as_list(),
            "p_value": f(live.pvalue),
            "state": live.state,
            "method": live.method,
        },
        "paired": paired,
        "method": "per variant: Wilson intervals; challenger - champion: score intervals with the "
        "p-value of the same score test (independent: Mee; paired: Tango), valid at small counts; "
        "the error-rate gate uses always-valid intervals (see gates)",
    }
