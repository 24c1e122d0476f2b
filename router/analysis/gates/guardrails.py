"""The operational guardrails (tested, always valid; a failure rolls back): the challenger's p95
latency, its p95 regression against the champion, its error-rate difference, and the response
contract (fields missing, extra or retyped)."""

from __future__ import annotations

from functools import partial
from typing import Any

from router.analysis import sequential as sq
from router.analysis.gates.rows import (
    CS_BOUNDED,
    CS_PROPORTIONS,
    CS_QUANTILE,
    NO_PAIRS,
    ci_text,
    fmt,
    row,
)
from router.analysis.gates.rules import (
    FAIL,
    INCONCLUSIVE,
    NOT_APPLICABLE,
    NOT_ENOUGH_DATA,
    PASS,
    interval_state,
    live_proportions_interval,
    paired_tolerance_state,
    state_of,
)


def latency_p95(report: dict[str, Any], limit: float) -> dict[str, Any]:
    lat = report["latency"]
    served = lat["per_variant"]["challenger"]
    if served["n"] > 0:
        src, q = "served requests", served
    else:
        src, q = "mirrored requests", lat["paired"]["per_side"]["challenger"]
    lo, hi = q["always_valid"]["p95"]
    nh = f"the challenger's p95 latency is at most {limit:g} ms"
    gate = partial(row, "latency_p95", "guardrail", null_hypothesis=nh, test=CS_QUANTILE,
                   always_valid=True, ci=[lo, hi], better="lower")  # fmt: skip
    if q["n"] == 0:
        return gate(NOT_ENOUGH_DATA, None, limit, "no challenger latencies yet")
    state = state_of(interval_state(lo, hi, limit, "lower"))
    why = (
        f"challenger p95 {fmt(q['p95'], 5)} ms on {q['n']} {src}, always-valid interval "
        + ci_text(lo, hi, 5)
    )
    if state == NOT_ENOUGH_DATA:
        why += f" (an upper bound needs about {q['always_valid']['min_n']['p95']} latencies)"
    return gate(state, q["p95"], limit, why)


def latency_regression(report: dict[str, Any], limit: float) -> dict[str, Any]:
    lat = report["latency"]
    paired = lat["paired"]["quantiles"]["p95"]
    live = lat["live_delta"]["p95"]
    if lat["paired"]["per_side"]["challenger"]["n"] > 0:
        q, src = paired, "the same mirrored requests"
    else:
        q, src = live, "the live split's served requests"
    nh = f"challenger p95 − champion p95 is at most {limit:g} ms"
    test = CS_QUANTILE + ", one per side at alpha/2, differenced"
    lo, hi = q["delta_cs"]
    gate = partial(row, "latency_regression", "guardrail", null_hypothesis=nh, test=test,
                   always_valid=True, ci=[lo, hi], better="lower")  # fmt: skip
    if q["delta_ms"] is None:
        return gate(NOT_ENOUGH_DATA, None, limit, "no latencies of both models yet")
    state = state_of(interval_state(lo, hi, limit, "lower"))
    why = (
        f"challenger p95 − champion p95 on {src}: {q['delta_ms']:+.1f} ms, always-valid "
        f"interval {ci_text(lo, hi, 4)}"
    )
    return gate(state, q["delta_ms"], limit, why)


def error_rate(report: dict[str, Any], limit: float, alpha: float) -> dict[str, Any]:
    err = report["errors"]
    nh = f"challenger − champion error rate is at most {limit:g}"
    gate = partial(row, "error_rate_delta", "guardrail", null_hypothesis=nh, always_valid=True,
                   better="lower")  # fmt: skip
    pe = err["paired"]
    if pe["n"] > 0:
        n, b, c = pe["n"], pe["discordant"]["champion_only"], pe["discordant"]["challenger_only"]
        lo_a, hi_a = sq.bounded_mean_cs(n, (c - b) / n, (b + c) - (c - b) ** 2 / n, -1, 1, alpha)
        state = state_of(paired_tolerance_state(n, b, c, limit, "lower", alpha))
        d, src, test = (c - b) / n, f"{n} mirrored pairs", CS_BOUNDED + " (paired)"
    else:
        pv = err["per_variant"]
        x1, n1 = pv["champion"]["errors"], pv["champion"]["n"]
        x2, n2 = pv["challenger"]["errors"], pv["challenger"]["n"]
        if n1 == 0 or n2 == 0:
            why = "no requests on both models yet"
            return gate(NOT_ENOUGH_DATA, None, limit, why, test=CS_PROPORTIONS)
        lo_a, hi_a = live_proportions_interval(x1, n1, x2, n2, alpha)
        state = state_of(interval_state(lo_a, hi_a, limit, "lower"))
        d, src, test = x2 / n2 - x1 / n1, f"the live split ({n2} / {n1} requests)", CS_PROPORTIONS
    lo, hi = float(lo_a), float(hi_a)
    why = f"challenger − champion error rate {d:+.4f} on {src}, always-valid interval "
    why += ci_text(lo, hi)
    return gate(state, d, limit, why, test=test, ci=[lo, hi])


def contract(report: dict[str, Any], limit: float, alpha: float) -> dict[str, Any]:
    ct = report["divergence"]["contract"]
    n, worst = ct["comparable_pairs"], ct["max_path_pairs"]
    nh = f"no response field breaks in more than {limit:.2%} of pairs"
    test = (
        "confidence sequence for the share of the most-broken field (beta-binomial, "
        "Robbins 1970), Bonferroni over the fields listed"
    )
    gate = partial(row, "response_contract", "schema", null_hypothesis=nh, test=test,
                   always_valid=True, better="lower")  # fmt: skip
    if n == 0:
        unmirrored = report["counts"]["mirrored_pairs"] == 0
        return gate(
            NOT_APPLICABLE if unmirrored else NOT_ENOUGH_DATA,
            None,
            limit,
            NO_PAIRS if unmirrored else "no comparable mirrored pairs yet (all had an error)",
        )
    m = max(len(ct["paths"]), 1)
    lo_f, _ = sq.proportion_cs(worst, n, alpha / m)  # fail: any field shown past the limit
    _, hi_p = sq.proportion_cs(worst, n, alpha)  # pass: even the worst field shown within
    state = FAIL if lo_f > limit else PASS if hi_p <= limit else INCONCLUSIVE
    share = worst / n
    path = ct["paths"][0] if ct["paths"] else None
    what = (
        f"{path['change']} {path['path']} in {share:.2%} of {n} pairs"
        if path
        else f"no field differs above the noise share ({n} pairs)"
    )
    why = f"{what}, always-valid interval {ci_text(float(lo_f), float(hi_p))}"
    return gate(state, share, limit, why, ci=[float(lo_f), float(hi_p)])
