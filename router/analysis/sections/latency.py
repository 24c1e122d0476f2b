"""The ``latency`` section: quantiles per variant and of the same mirrored requests, with
distribution-free intervals (fixed horizon and always valid) and challenger-minus-champion
differences."""

from __future__ import annotations

from typing import Any

from router.analysis import quantiles, sequential, stats
from router.analysis.accumulate import VARIANTS, Accumulator
from router.analysis.jsonsafe import f

QUANTILES = (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))


def _hist_summary(h: Any, alpha: float, tau: float) -> dict[str, Any]:
    """Quantiles of a latency histogram with their fixed-horizon intervals (and, under
    ``always_valid``, their confidence sequences); a side of an interval whose order statistic
    does not exist yet is null and the quantile's ``ci_state`` says ``not_enough_data``."""
    n = h.n
    out: dict[str, Any] = {"n": n, "ci_state": {}, "ci_min_n": {}}
    av: dict[str, Any] = {"min_n": {}}
    for name, q in QUANTILES:
        qi = quantiles.quantile_interval(n, q, alpha)
        lo, hi = h.bounds_at_ranks(qi.low, qi.high)
        out[name] = f(h.quantile(q))
        out[f"{name}_ci"] = [f(lo), f(hi)]
        out["ci_state"][name] = qi.state
        out["ci_min_n"][name] = qi.min_n
        av[name] = _quantile_cs(h, q, alpha, tau)
        av["min_n"][name] = sequential.quantile_cs_min_n(q, alpha, tau)
    out["always_valid"] = av
    return out


def _quantile_cs(h: Any, q: float, alpha: float, tau: float) -> list[float | None]:
    """The always-valid interval of the ``q`` quantile of a latency histogram (bin edges)."""
    if h.n == 0:
        return [None, None]
    r_lo, r_hi = sequential.quantile_cs_ranks(h.n, q, alpha, tau)
    lo, hi = h.bounds_at_ranks(int(r_lo), int(r_hi))
    return [f(lo), f(hi)]


def _quantile_deltas(a: Any, b: Any, alpha: float, tau: float) -> dict[str, Any]:
    """Challenger (``b``) minus champion (``a``) quantiles: the fixed-horizon interval and the
    confidence sequence of the difference, each from the two marginal intervals at α/2
    (``[lo_b − hi_a, hi_b − lo_a]``: conservative, needs no independence, so it holds for the
    same mirrored requests too)."""
    out: dict[str, Any] = {}
    for name, q in QUANTILES:
        qa, qb = a.quantile(q), b.quantile(q)
        ia = quantiles.quantile_interval(a.n, q, alpha / 2)
        ib = quantiles.quantile_interval(b.n, q, alpha / 2)
        alo, ahi = a.bounds_at_ranks(ia.low, ia.high)
        blo, bhi = b.bounds_at_ranks(ib.low, ib.high)
        sa, sb = _quantile_cs(a, q, alpha / 2, tau), _quantile_cs(b, q, alpha / 2, tau)
        lo = blo - ahi if blo is not None and ahi is not None else None
        hi = bhi - alo if bhi is not None and alo is not None else None
        cs_lo = sb[0] - sa[1] if sb[0] is not None and sa[1] is not None else None
        cs_hi = sb[1] - sa[0] if sb[1] is not None and sa[0] is not None else None
        out[name] = {
            "champion": f(qa),
            "challenger": f(qb),
            "delta_ms": f(qb - qa) if qa is not None and qb is not None else None,
            "delta_lower_ms": f(lo),
            "delta_upper_ms": f(hi),
            "state": "ok" if lo is not None and hi is not None else "not_enough_data",
            "delta_cs": [f(cs_lo), f(cs_hi)],
        }
    return out


def latency_section(acc: Accumulator, alpha: float, tau: float) -> dict[str, Any]:
    per = {}
    for v in (0, 1):
        d = _hist_summary(acc.latency[v], alpha, tau)
        d["mean"] = f(acc.latency_moments[v].mean)
        per[VARIANTS[v]] = d
    m = acc.paired.latency_diff
    diff = stats.paired_mean_centred(m.n, m.mu, m.m2, alpha)
    paired: dict[str, Any] = {
        "n": int(m.n),
        "mean_diff_ms": f(diff.estimate),
        "mean_diff_ci": diff.ci.as_list(),
        "p_value": f(diff.pvalue),
        "state": diff.state,
        "method": "paired t-test on challenger - champion latency of the same mirrored requests",
        "per_side": {VARIANTS[v]: _hist_summary(acc.paired.latency[v], alpha, tau) for v in (0, 1)},
        "quantiles": _quantile_deltas(acc.paired.latency[0], acc.paired.latency[1], alpha, tau),
    }
    return {
        "per_variant": per,
        "paired": paired,
        "live_delta": _quantile_deltas(acc.latency[0], acc.latency[1], alpha, tau),
        "unit": "ms",
        "method": "2%-wide log histograms; quantile intervals from order statistics widened to "
        "their bins' edges (distribution-free; a side is null until its order statistic exists: "
        "p95 needs 72 latencies, p99 368 at alpha 0.05); always_valid: confidence sequences "
        "of the quantiles (beta-binomial boundary), used by the gates; differences from the two "
        "marginal intervals at alpha/2 each",
    }
