"""Turn an :class:`~router.analysis.accumulate.Accumulator` into the DESIGN.md report (pure).

Top-level keys: ``experiment, window, counts, srm, latency, errors, divergence, quality, metrics,
segments, drift, data_quality, gates, decision, meta``. Every number is finite or ``null``;
every statistic that cannot be computed says why in a ``state`` field.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import polars as pl
from scipy import stats as st

from router.analysis import measures, proportions, quantiles, sample_size, sequential, stats
from router.analysis.accumulate import VARIANTS, Accumulator
from router.analysis.data_quality import data_quality_section
from router.analysis.fields import fine_bin_value
from router.analysis.frames import rid_hash
from router.analysis.gates import evaluate
from router.analysis.outcomes_index import OutcomeIndex
from router.analysis.policy import MetricSpec, Policy
from router.analysis.sketches import CoMoments
from router.analysis.stats import Interval

REPORT_VERSION = 1
BOOTSTRAP_ROWS = 20_000  # the AUC bootstrap resamples (the first rows of) the hash sample
QUANTILES = (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))


def f(x: Any) -> float | None:
    """A JSON-safe float: None for None, NaN and infinities."""
    if x is None:
        return None
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _ci(i: Interval) -> list[float | None]:
    return i.as_list()


# ------------------------------------------------------------------------------ sections
def _window(acc: Accumulator, earliest_available: float | None) -> dict[str, Any]:
    trimmed = (
        earliest_available is not None and acc.since is not None and earliest_available > acc.since
    )
    return {
        "since": f(acc.since),
        "until": f(acc.until),
        "first_record_ts": f(acc.first_ts),
        "last_record_ts": f(acc.last_ts),
        "duration_s": f(_duration(acc)),
        "earliest_available": f(earliest_available),
        "trimmed": bool(trimmed),
    }


def _duration(acc: Accumulator) -> float | None:
    if acc.first_ts is None or acc.last_ts is None:
        return None
    return acc.last_ts - acc.first_ts


def _unit_counts(acc: Accumulator) -> list[int]:
    return acc.units.counts()


def _counts(acc: Accumulator, joined_by_unit: int, pre_exposure: int) -> dict[str, Any]:
    oi = acc.outcomes
    units = _unit_counts(acc)
    joined = acc.joined_by_request + joined_by_unit
    return {
        "records": acc.records,
        "per_variant": {VARIANTS[v]: acc.requests[v] for v in (0, 1)},
        "mirrored_pairs": acc.paired.pairs,
        "comparable_pairs": acc.paired.comparable,
        "units": {"champion": units[0], "challenger": units[1], "both_variants": units[2]},
        "duplicates_skipped": acc.duplicates,
        "conflicts": acc.conflicts,
        "invalid_records": acc.invalid,
        "outside_window": acc.outside_window,
        "outcomes": {
            "rows": oi.total,
            "valid": oi.valid,
            "invalid": oi.invalid,
            "duplicates": oi.duplicate_rows,
            "joined": joined,
            "unjoined": max(oi.valid - joined - pre_exposure, 0),
            "before_exposure": pre_exposure,
            "outside_window": oi.outside_window,
        },
    }


def _srm(acc: Accumulator, policy: Policy, split: float | None) -> dict[str, Any]:
    units = _unit_counts(acc)
    base: dict[str, Any] = {
        "split": f(split),
        "alpha": policy.srm.alpha,
        "min_share_diff": policy.srm.min_share_diff,
        "observed": {"champion": units[0], "challenger": units[1]},
        "excluded_units_in_both_variants": units[2],
    }
    if split is None:
        return base | {
            "state": "not_applicable",
            "reason": "split fraction unknown (pass --split)",
            "statistic": None,
            "p_value": None,
            "sequential_p_value": None,
            "mismatch": False,
            "max_share_diff": None,
        }
    res = proportions.srm_test(units[:2], [1 - split, split], policy.srm.alpha,
                         policy.srm.min_share_diff, policy.sequential.tau)  # fmt: skip
    reason = {
        "ok": "units per variant match the configured split"
        if not res.mismatch
        else "units per variant deviate from the configured split",
        "not_enough_data": "no units in the window yet",
        "not_applicable": "single-arm split (0 or 1): nothing to compare",
    }[res.state]
    total = units[0] + units[1]
    return base | {
        "state": res.state,
        "reason": reason,
        "statistic": f(res.statistic),
        "p_value": f(res.pvalue),
        "sequential_p_value": f(res.sequential_pvalue),
        "mismatch": res.mismatch,
        "max_share_diff": f(res.max_share_diff),
        "expected": {"champion": f(total * (1 - split)), "challenger": f(total * split)},
        "method": res.method,
    }


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


def _latency(acc: Accumulator, alpha: float, tau: float) -> dict[str, Any]:
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
        "mean_diff_ci": _ci(diff.ci),
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


def _errors(acc: Accumulator, alpha: float) -> dict[str, Any]:
    per = {}
    for v in (0, 1):
        n, e = acc.requests[v], acc.errors[v]
        per[VARIANTS[v]] = {
            "n": n,
            "errors": e,
            "rate": f(e / n) if n else None,
            "ci": _ci(proportions.wilson_interval(e, n, alpha)),
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
            "ci": _ci(pd.ci),
            "p_value": f(pd.pvalue),
            "method": pd.method + " (at a difference of 0: McNemar's chi-square without "
            "continuity correction)",
            "mcnemar": {
                "statistic": f(mc.statistic),
                "p_value": f(mc.pvalue),
                "method": mc.method,
            },
        }
    return {
        "per_variant": per,
        "live_delta": {
            "estimate": f(live.estimate),
            "ci": _ci(live.ci),
            "p_value": f(live.pvalue),
            "state": live.state,
            "method": live.method,
        },
        "paired": paired,
        "method": "per variant: Wilson intervals; challenger - champion: score intervals with the "
        "p-value of the same score test (independent: Mee; paired: Tango), valid at small counts; "
        "the error-rate gate uses always-valid intervals (see gates)",
    }


def _divergence(acc: Accumulator, policy: Policy) -> dict[str, Any]:
    kind = acc.kind
    pa = acc.paired
    out: dict[str, Any] = {"kind": kind, "pairs": pa.pairs, "comparable": pa.comparable}
    pm = acc.paired.moments
    n = pm.n
    if kind in ("score", "value") and n >= 1:
        mad = pm.sabs / n
        dm = pm.diff  # d = challenger - champion, Welford moments: no cancellation
        rmse = math.sqrt(max(dm.m2 / n + dm.mu * dm.mu, 0.0))
        co = pm.co
        scale = max(abs(co.mx), abs(co.my), 1e-300) ** 2
        ok = co.cxx > 1e-24 * n * scale and co.cyy > 1e-24 * n * scale
        pearson = co.cxy / math.sqrt(co.cxx * co.cyy) if ok else None
        out |= {"n": int(n), "mean_abs_diff": f(mad), "rmse": f(rmse), "pearson": f(pearson)}
        items = acc.paired.sample.items()
        xs, ys = items[:, 0], items[:, 1]
        out["sample"] = {
            "n": int(xs.size),
            "of": acc.paired.sample.seen,
            "complete": acc.paired.sample.complete,
            "method": "bottom-k sample by a stable hash of request_id",
        }
        out |= _distribution_stats(xs, ys, policy)
        if kind == "score":
            out["flip_rate"] = {str(t): f(pa.flips[i] / n) for i, t in enumerate(acc.thresholds)}
        else:
            diff = stats.paired_mean_centred(n, dm.mu, dm.m2, policy.alpha)
            out["mean_signed_diff"] = {
                "estimate": f(diff.estimate),
                "ci": _ci(diff.ci),
                "p_value": f(diff.pvalue),
                "state": diff.state,
            }
    elif kind == "class" and acc.paired.confusion:
        total = sum(acc.paired.confusion.values())
        labels_count: Counter[str] = Counter()
        for (a, b), c in acc.paired.confusion.items():
            labels_count[a] += c
            labels_count[b] += c
        top = [lab for lab, _ in labels_count.most_common(10)]
        idx = {lab: i for i, lab in enumerate(top)}
        mat = np.zeros((len(top) + 1, len(top) + 1), dtype=np.int64)
        for (a, b), c in acc.paired.confusion.items():
            mat[idx.get(a, len(top)), idx.get(b, len(top))] += c
        agree = sum(c for (a, b), c in acc.paired.confusion.items() if a == b)
        full_labels = sorted(labels_count)
        fi = {lab: i for i, lab in enumerate(full_labels)}
        full = np.zeros((len(full_labels), len(full_labels)))
        for (a, b), c in acc.paired.confusion.items():
            full[fi[a], fi[b]] += c
        out |= {
            "n": total,
            "agreement": f(agree / total),
            "cohen_kappa": f(measures.cohen_kappa(full)),
            "confusion": {
                "labels": top + (["other"] if len(labels_count) > len(top) else []),
                "rows": "champion",
                "columns": "challenger",
                "matrix": mat[
                    : len(top) + (len(labels_count) > len(top)),
                    : len(top) + (len(labels_count) > len(top)),
                ].tolist(),
            },
        }
    elif kind == "vector" and acc.paired.vector_pairs >= 1:
        nv = acc.paired.vector_pairs
        out |= {
            "n": nv,
            "argmax_agreement": f(acc.paired.vector_agree / nv),
            "mean_js_distance": f(acc.paired.vector_js / nv),
        }
    else:
        out |= {"n": 0, "state": "not_enough_data"}
    out["contract"] = _contract(acc, policy)
    return out


def _distribution_stats(xs: np.ndarray, ys: np.ndarray, policy: Policy) -> dict[str, Any]:
    if xs.size < 2:
        return {"state": "not_enough_data"}
    bins = policy.divergence.psi_bins
    edges = np.unique(np.quantile(xs, np.linspace(0, 1, bins + 1)[1:-1]))
    cx = np.bincount(np.searchsorted(edges, xs, side="right"), minlength=edges.size + 1)
    cy = np.bincount(np.searchsorted(edges, ys, side="right"), minlength=edges.size + 1)
    ks = st.ks_2samp(xs, ys)
    sdx = float(np.std(xs))
    wd = float(st.wasserstein_distance(xs, ys))
    rho = st.spearmanr(xs, ys).statistic if np.ptp(xs) > 0 and np.ptp(ys) > 0 else None
    return {
        "spearman": f(rho),
        "psi": f(measures.psi(cx, cy)),
        "psi_band": measures.psi_band(measures.psi(cx, cy)),
        "psi_bins": int(edges.size + 1),
        "ks": {"statistic": f(ks.statistic), "p_value": f(ks.pvalue)},
        "js_distance": f(measures.jensen_shannon(cx, cy)),
        "wasserstein": f(wd),
        "wasserstein_normalised": f(wd / sdx) if sdx > 0 else None,
    }


def _contract(acc: Accumulator, policy: Policy) -> dict[str, Any]:
    n = acc.paired.comparable
    noise = policy.divergence.contract_noise_share
    paths: list[dict[str, Any]] = []
    for (kind, path), c in sorted(acc.paired.contract.items(), key=lambda kv: -kv[1]):
        share = c / n if n else 0.0
        if share > noise:
            paths.append({"path": path, "change": kind, "pairs": c, "share": f(share)})
    return {
        "comparable_pairs": n,
        "noise_share": noise,
        "paths": paths[:100],
        "max_share": f(max((float(p["share"] or 0.0) for p in paths), default=0.0)),
        "max_path_pairs": max(acc.paired.contract.values(), default=0),
        "method": "per JSON path: share of comparable mirrored pairs where the challenger's field "
        "is missing, extra or of another type; reported above the noise share",
    }


def _quality(acc: Accumulator, policy: Policy) -> dict[str, Any]:
    q = acc.paired.quality
    kind = acc.kind
    out: dict[str, Any] = {
        "label_metric": acc.label_metric,
        "n": q.n,
        "method": "mirrored pairs joined to the label outcome by request_id; "
        "both models on the same requests, paired tests",
    }
    if q.n == 0 and q.with_loss == 0:
        return out | {"state": "not_enough_data"}
    models: dict[str, dict[str, Any]] = {"champion": {}, "challenger": {}}
    for i, name in enumerate(VARIANTS):
        m = models[name]
        if kind == "value":
            n = q.with_loss
            m["mae"] = f(q.brier[i] / n) if n else None
            m["rmse"] = f(math.sqrt(q.loss[i] / n)) if n else None
        else:
            m["accuracy"] = f(q.correct[i] / q.n) if q.n else None
            if q.with_loss:
                m["log_loss"] = f(q.loss[i] / q.with_loss)
            if kind == "score" and q.n:
                m["brier"] = f(q.brier[i] / q.n)
    tests: dict[str, Any] = {}
    if kind != "value" and q.n:
        mc = proportions.mcnemar(q.b, q.c)
        pd = proportions.paired_proportion_diff(q.b, q.c, q.n, policy.alpha)
        tests["accuracy"] = {
            "delta": f((q.correct[1] - q.correct[0]) / q.n),
            "ci": _ci(pd.ci),
            "p_value": f(pd.pvalue),
            "method": pd.method + " (at a difference of 0: McNemar's chi-square without "
            "continuity correction)",
            "mcnemar": {
                "statistic": f(mc.statistic),
                "p_value": f(mc.pvalue),
                "method": mc.method,
            },
            "discordant": [q.b, q.c],
        }
    if kind == "value":
        tests["rmse_ratio"] = _rmse_ratio(q.sq_err, policy)
    ld = q.loss_diff
    if ld.n >= 2:
        pt = stats.paired_mean_centred(ld.n, ld.mu, ld.m2, policy.alpha)
        name = "squared_error" if kind == "value" else "log_loss"
        tests[name] = {
            "delta": f(pt.estimate),
            "ci": _ci(pt.ci),
            "p_value": f(pt.pvalue),
            "method": pt.method,
            "state": pt.state,
        }
    if kind == "score":
        items = acc.paired.labelled_sample.items()
        if items.size:
            y, s1, s2 = items[:, 0], items[:, 1], items[:, 2]
            boot = min(y.size, BOOTSTRAP_ROWS)
            a1, a2 = measures.auc(y, s1), measures.auc(y, s2)
            models["champion"]["roc_auc"] = f(a1)
            models["challenger"]["roc_auc"] = f(a2)
            if policy.bootstrap_resamples:
                d, ci = measures.paired_bootstrap_auc_diff(
                    y[:boot],
                    s1[:boot],
                    s2[:boot],
                    policy.bootstrap_resamples,
                    policy.alpha,
                    policy.seed,
                )
                full = a2 - a1 if a1 is not None and a2 is not None else d
                tests["roc_auc"] = {
                    "delta": f(full),
                    "ci": _ci(ci),
                    "method": f"paired percentile bootstrap over {boot} labelled pairs, "
                    f"{policy.bootstrap_resamples} resamples, seed {policy.seed}",
                    "sample": {"n": int(y.size), "of": acc.paired.labelled_sample.seen},
                }
    return out | {"state": "ok", "models": models, "tests": tests}


def _rmse_ratio(sq: Any, policy: Policy) -> dict[str, Any]:
    """Challenger RMSE / champion RMSE − 1 on the same labelled requests, with the delta-method
    interval of ``log(MSE_challenger / MSE_champion)`` (paired: the covariance of the two
    squared errors counts) in fixed-horizon and always-valid (mSPRT) form."""
    n = sq.n
    method = ("delta method on log(MSE_challenger / MSE_champion) from the paired squared "
              "errors; sequential: mSPRT normal mixture")  # fmt: skip
    out: dict[str, Any] = {"n": int(n), "method": method}
    none = {"estimate": None, "ci": [None, None], "sequential_ci": [None, None]}
    if n < 2:
        return out | none | {"state": "not_enough_data"}
    lr_a, var_a = stats.log_mse_ratio(n, sq.mx, sq.my, sq.cxx, sq.cyy, sq.cxy)
    lr, var = float(lr_a), float(var_a)
    if not (math.isfinite(var) and var > 0):
        return out | none | {"state": "zero_variance"}
    z = float(st.norm.ppf(1 - policy.alpha / 2))
    h = z * math.sqrt(var)
    _p, slo, shi = sequential.normal_mixture_ci(lr, var, rmse_tau(var, n, policy), policy.alpha)

    def back(x: float) -> float | None:
        return f(math.exp(x / 2) - 1)

    return out | {"state": "ok", "estimate": back(lr), "log_mse_ratio": f(lr),
                  "ci": [back(lr - h), back(lr + h)],
                  "sequential_ci": [back(float(slo)), back(float(shi))]}  # fmt: skip


def rmse_tau(var: Any, n: Any, policy: Policy) -> Any:
    """The mSPRT mixture spread for the log MSE ratio: ``sequential.tau`` times the estimated
    per-pair standard deviation of its influence function, ``sqrt(n · var)``."""
    return policy.sequential.tau * np.sqrt(np.asarray(var) * np.asarray(n))


def _unit_values(acc: Accumulator) -> tuple[pl.DataFrame, int, int]:
    """Unit-joined outcomes summed per (unit, metric name), those before the unit's first
    exposure left out (and counted), without mutating acc."""
    byu = acc.outcomes.by_unit
    ex = acc.units.exposures()
    empty = pl.DataFrame(schema={"unit": pl.String, "metric": pl.String, "s": pl.Float64,
                                 "n": pl.Int64, "mx": pl.Float64})  # fmt: skip
    if not byu.height or not ex.height:
        return empty, 0, 0
    j = byu.join(ex.select("unit", "first_ts"), on="unit", how="inner")
    before = (pl.col("ts") != 0) & (pl.col("ts") < pl.col("first_ts"))
    kept = j.filter(~before)
    extra = kept.group_by("unit", "metric").agg(
        s=pl.col("value").sum(), n=pl.len().cast(pl.Int64), mx=pl.col("value").max()
    )
    return extra, kept.height, j.height - kept.height


class _UnitView:
    """The per-unit side of one report, computed once: unit-joined outcomes folded in, the units
    served by a single variant in a fixed order (by a hash of the unit: deterministic however
    the accumulator was merged, and cheaper to sort than strings), and each metric's arrays."""

    def __init__(self, acc: Accumulator) -> None:
        self.acc = acc
        self.extra, self.joined, self.before_exposure = _unit_values(acc)
        single = acc.units.exposures().filter(~(pl.col("champion") & pl.col("challenger")))
        self.single = single.with_columns(key=rid_hash(pl.col("unit"))).sort("key")
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}

    def arrays(
        self, metric: str, spec: MetricSpec
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if metric not in self._arrays:
            self._arrays[metric] = _unit_metric_arrays(self, metric, spec)
        return self._arrays[metric]


def _unit_metric_arrays(
    uv: _UnitView, metric: str, spec: MetricSpec
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(variant, first_ts, value, segment combination) per unit served by a single variant;
    units without an outcome per ``spec.missing``."""
    acc, extra = uv.acc, uv.extra
    parts = []
    mid = acc.outcomes.metric_id(metric)
    if mid is not None:
        um = acc.units.metrics()
        parts.append(um.filter(pl.col("metric") == mid).select("unit", "s", "n", "mx"))
    if extra.height:
        parts.append(extra.filter(pl.col("metric") == metric).select("unit", "s", "n", "mx"))
    if parts:
        vals = (
            pl.concat(parts)
            .group_by("unit")
            .agg(pl.col("s").sum(), pl.col("n").sum(), pl.col("mx").max())
        )
    else:
        vals = pl.DataFrame(schema={"unit": pl.String, "s": pl.Float64, "n": pl.Int64,
                                    "mx": pl.Float64})  # fmt: skip
    df = uv.single.join(vals, on="unit", how="left", maintain_order="left")
    if spec.reduce == "max":
        x = pl.col("mx")
    elif spec.reduce == "sum":
        x = pl.col("s")
    else:
        x = pl.col("s") / pl.col("n")
    df = df.with_columns(x=x)
    if spec.missing_as_zero:
        df = df.with_columns(pl.col("x").fill_null(0.0))
    else:
        df = df.filter(pl.col("n").is_not_null())
    return (
        df["challenger"].cast(pl.Int8).to_numpy(),
        df["first_ts"].to_numpy(),
        df["x"].cast(pl.Float64).to_numpy(),
        df["combo"].to_numpy(),
    )


def _uplift(
    n: tuple[float, float],
    mean: tuple[float, float],
    var: tuple[float, float],
    policy: Policy,
) -> dict[str, Any]:
    """Challenger − champion of one metric: the absolute uplift with Welch's test (its p-value
    and interval from the same test, for proportions too: unpooled, as gbstats), the relative
    uplift with the delta method (which counts the control mean's uncertainty), and both in
    always-valid form (mSPRT). ``n`` are the independent units (clusters) per arm and ``var``
    their per-unit variance (for a ``per: request`` metric, the delta-method variance of the
    ratio of unit sums)."""
    alpha = policy.alpha
    w = stats.welch(mean[0], var[0], n[0], mean[1], var[1], n[1], alpha)
    rel = stats.relative_uplift(mean[0], var[0], n[0], mean[1], var[1], n[1], alpha)
    ok = w.state == stats.OK
    vd = (var[0] / n[0] + var[1] / n[1]) if ok else 0.0
    pooled_sd = math.sqrt((var[0] + var[1]) / 2) if ok else 0.0
    tau = policy.sequential.tau * pooled_sd
    seq = (
        stats.msprt(w.estimate, vd, tau, alpha)
        if ok and w.estimate is not None
        else stats.SequentialResult(None, Interval(None, None), None, state=w.state)
    )
    rel_seq: list[float | None] = [None, None]
    if ok and rel.state == stats.OK and rel.estimate is not None and rel.variance:
        # the same mixture on the relative scale: tau in units of the control mean
        rtau = tau / abs(mean[0])
        _p, lo, hi = sequential.normal_mixture_ci(rel.estimate, rel.variance, rtau, alpha)
        rel_seq = [f(lo), f(hi)]
    return {
        "absolute": f(w.estimate),
        "ci": _ci(w.ci),
        "relative": f(rel.estimate),
        "relative_ci": _ci(rel.ci),
        "relative_sequential_ci": rel_seq,
        "relative_state": rel.state,
        "p_value": f(w.pvalue),
        "sequential_p_value": f(seq.pvalue),
        "sequential_ci": _ci(seq.ci),
        "sequential_tau": f(seq.tau),
        "state": w.state,
        "method": w.method,
        "sequential_method": seq.method,
        "_variance": vd,
    }


def _request_metric_arms(
    acc: Accumulator, uv: _UnitView, metric: str, spec: MetricSpec
) -> list[dict[str, float]]:
    """Per arm, a ``per: request`` metric as a ratio of unit sums (GrowthBook's and Statsig's
    ratio metrics): each unit served by one variant is a cluster with ``X`` = the sum of its
    requests' values and ``N`` = its requests (with ``missing: exclude``, its requests that
    have a value); a request without a unit is a cluster of one. The mean is ``ΣX / ΣN`` and
    the per-cluster variance the delta method's
    ``(s²_X − 2 R s_XN + R² s²_N) / N̄²`` (equals gbstats ``RatioStatistic``)."""
    mid = acc.outcomes.metric_id(metric)
    rv = acc.units.request_values()
    if mid is not None and rv.height:
        vals = rv.filter(pl.col("metric") == mid).select("unit", "s", "n")
    else:
        vals = pl.DataFrame(schema={"unit": pl.String, "s": pl.Float64, "n": pl.Int64})
    df = uv.single.select("unit", "challenger", "requests").join(vals, on="unit", how="left")
    df = df.with_columns(pl.col("s").fill_null(0.0), pl.col("n").fill_null(0))
    den = pl.col("requests") if spec.missing_as_zero else pl.col("n")
    df = df.with_columns(d=den.cast(pl.Float64)).filter(pl.col("d") > 0)
    v = df["challenger"].to_numpy()
    x, d = df["s"].to_numpy(), df["d"].to_numpy()
    out = []
    for i in (0, 1):
        co = CoMoments()
        co.add_arrays(x[v == i], d[v == i])
        solo = acc.request_metric_moments[metric][i]  # requests without a unit: clusters of 1
        co.merge(CoMoments(solo.n, solo.mu, 1.0, solo.m2, 0.0, 0.0))
        ratio, var = stats.ratio_variance(co.n, co.mx, co.my, co.cxx, co.cyy, co.cxy)
        out.append({"clusters": co.n, "requests": co.my * co.n, "mean": float(ratio),
                    "var": float(var)})  # fmt: skip
    return out


def _metrics(acc: Accumulator, policy: Policy, uv: _UnitView) -> dict[str, Any]:
    out: dict[str, Any] = {}
    duration = _duration(acc) or 0.0
    for metric, (spec, inferred) in acc.specs.items():
        entry: dict[str, Any] = {
            "type": spec.type,
            "per": spec.per,
            "inferred": inferred,
            "reduce": spec.reduce,
            "missing": "zero" if spec.missing_as_zero else "exclude",
        }
        series: list[dict[str, Any]] = []
        if spec.per == "request":
            arms = _request_metric_arms(acc, uv, metric, spec)
            n = (arms[0]["clusters"], arms[1]["clusters"])
            mean = (arms[0]["mean"], arms[1]["mean"])
            var = (arms[0]["var"], arms[1]["var"])
            entry["variants"] = {
                VARIANTS[i]: {
                    "n": round(arms[i]["requests"]),
                    "units": int(arms[i]["clusters"]),
                    "mean": f(mean[i]) if arms[i]["requests"] else None,
                    "variance": f(var[i]) if n[i] > 1 else None,
                }
                for i in (0, 1)
            }
            entry["variance_method"] = (
                "ratio of unit sums; variance per unit by the delta method (clustered by unit), "
                "n = requests, units = clusters"
            )
        else:
            v, t, x, _c = uv.arrays(metric, spec)
            sel = [x[v == i] for i in (0, 1)]
            n = (float(sel[0].size), float(sel[1].size))
            mean = tuple(float(s.mean()) if s.size else 0.0 for s in sel)  # type: ignore[assignment]
            var = tuple(float(s.var(ddof=1)) if s.size > 1 else 0.0 for s in sel)  # type: ignore[assignment]
            series = _series(v, t, x, spec, policy)
            entry["variants"] = {
                VARIANTS[i]: {
                    "n": int(n[i]),
                    "mean": f(mean[i]) if n[i] else None,
                    "variance": f(var[i]) if n[i] > 1 else None,
                }
                for i in (0, 1)
            }
        up = _uplift(n, mean, var, policy)
        vd = up.pop("_variance")
        entry["uplift"] = up
        entry["mde"] = f(sample_size.mde(vd, policy.alpha, policy.power)) if vd > 0 else None
        entry |= _sample_size(metric, spec, n, mean, var, policy, duration)
        entry["series"] = series
        out[metric] = entry
    pvals = [e["uplift"]["p_value"] for e in out.values()]
    for e, adj in zip(out.values(), stats.holm(pvals), strict=True):
        e["uplift"]["p_value_holm"] = f(adj)
    return out


def _sample_size(
    metric: str,
    spec: MetricSpec,
    n: tuple[float, float],
    mean: tuple[float, float],
    var: tuple[float, float],
    policy: Policy,
    duration: float,
) -> dict[str, Any]:
    """Units per arm for the policy's effect (fixed-horizon, normal approximation: Cohen's h
    for a per-unit proportion, ``2 (z + z_power)² sd² / δ²`` otherwise, with the per-unit
    variance; a ``per: request`` metric uses its clustered per-unit variance), and the ETA at
    the current rate of new units."""
    pm = policy.primary_metric
    base = mean[0]
    if pm is not None and pm.name == metric and (pm.mde or pm.min_uplift):
        target = pm.mde or pm.min_uplift
        relative = pm.relative
    else:
        target, relative = 0.05, True  # default: a 5% relative change
    delta = target * abs(base) if relative else target
    if delta <= 0 or min(n) < 2:
        return {
            "target_effect": f(delta) if delta > 0 else None,
            "sample_size_per_arm": None,
            "eta_s": None,
        }
    if spec.type == "proportion" and spec.per == "unit" and 0 < base < 1 and 0 < base + delta < 1:
        need = sample_size.n_per_arm_proportions(base, base + delta, policy.alpha, policy.power)
    else:
        need = sample_size.n_per_arm_means(
            math.sqrt(max((var[0] + var[1]) / 2, 0.0)), delta, policy.alpha, policy.power
        )
    eta = None
    if math.isfinite(need) and duration > 0:
        rate = min(n) / duration
        eta = max(need - min(n), 0.0) / rate if rate > 0 else None
    return {
        "target_effect": f(delta),
        "target_relative": relative,
        "sample_size_per_arm": f(math.ceil(need)) if math.isfinite(need) else None,
        "eta_s": f(eta),
        "sample_size_method": "fixed-horizon two-sided test at alpha and power, normal "
        "approximation; the always-valid interval needs roughly 1.5-2.5x as many units",
    }


def _series(
    v: np.ndarray, t: np.ndarray, x: np.ndarray, spec: MetricSpec, policy: Policy, points: int = 12
) -> list[dict[str, Any]]:
    """Uplift by cumulative exposure cohort (units first exposed up to each time)."""
    if t.size < 4:
        return []
    order = np.argsort(t, kind="stable")
    v, t, x = v[order], t[order], x[order]
    out = []
    for cut in np.linspace(t[0], t[-1], points + 1)[1:]:
        k = int(np.searchsorted(t, cut, side="right"))
        s = [x[:k][v[:k] == i] for i in (0, 1)]
        if min(a.size for a in s) < 2:
            continue
        n = (float(s[0].size), float(s[1].size))
        m = (float(s[0].mean()), float(s[1].mean()))
        va = (float(s[0].var(ddof=1)), float(s[1].var(ddof=1)))
        up = _uplift(n, m, va, policy)
        out.append(
            {
                "ts": f(cut),
                "n": [int(n[0]), int(n[1])],
                "absolute": up["absolute"],
                "ci": up["ci"],
                "sequential_ci": up["sequential_ci"],
            }
        )
    return out


def _segments(
    acc: Accumulator, policy: Policy, metrics: dict[str, Any], uv: _UnitView
) -> dict[str, Any]:
    by_field: dict[str, list[dict[str, Any]]] = {}
    for (field_name, value), agg in acc.segments.tallies.items():
        row: dict[str, Any] = {"value": value, "requests": list(agg.requests)}
        row["error_rate"] = [
            f(agg.errors[i] / agg.requests[i]) if agg.requests[i] else None for i in (0, 1)
        ]
        row["latency_mean_ms"] = [f(agg.latency[i].mean) for i in (0, 1)]
        row["latency_p95_ms"] = [f(agg.latency_hist[i].quantile(0.95)) for i in (0, 1)]
        row["pairs"] = agg.pairs
        row["agreement"] = f(agg.agree / agg.pairs) if agg.pairs else None
        row["mean_abs_diff"] = (
            f(agg.abs_diff / agg.pairs) if agg.pairs and acc.kind in ("score", "value") else None
        )
        row["positive_rate"] = [
            f(agg.positives[i] / agg.predictions[i]) if agg.predictions[i] else None for i in (0, 1)
        ]
        row["predictions"] = list(agg.predictions)
        row["labelled"] = agg.labelled
        row["accuracy"] = [
            f(agg.correct[i] / agg.labelled) if agg.labelled else None for i in (0, 1)
        ]
        by_field.setdefault(field_name, []).append(row)
    pm = policy.primary_metric
    if pm is not None and pm.name in acc.specs and acc.specs[pm.name][0].per == "unit":
        spec = acc.specs[pm.name][0]
        per_seg: dict[tuple[str, str], list[list[float]]] = {}
        v, _t, x, combos = uv.arrays(pm.name, spec)
        for vi, xi, c in zip(v.tolist(), x.tolist(), combos.tolist(), strict=True):
            for item in acc.segments.combo_keys[c]:
                per_seg.setdefault(item, [[], []])[vi].append(xi)
        for rows_field, rows in by_field.items():
            for row in rows:
                vals = per_seg.get((rows_field, row["value"]))
                if vals:
                    row["primary_mean"] = [f(np.mean(a)) if a else None for a in vals]
                    row["primary_units"] = [len(a) for a in vals]
                    a0, a1 = np.asarray(vals[0]), np.asarray(vals[1])
                    if a0.size >= 2 and a1.size >= 2:
                        w = stats.welch(a0.mean(), a0.var(ddof=1), a0.size, a1.mean(),
                                        a1.var(ddof=1), a1.size, policy.alpha)  # fmt: skip
                        row["primary_uplift"] = {
                            "absolute": f(w.estimate),
                            "ci": _ci(w.ci),
                            "p_value": f(w.pvalue),
                            "state": w.state,
                        }
    min_n = policy.segments.min_n
    gap = _segment_gap(acc, by_field, min_n, metrics)
    disparity = _disparity(by_field, min_n)
    for rows in by_field.values():
        rows.sort(key=lambda r: (-sum(r["requests"]), str(r["value"])))
        del rows[policy.segments.max_values :]
    return {"fields": by_field, "gap": gap, "disparity": disparity, "min_n": min_n}


def _segment_gap(
    acc: Accumulator,
    by_field: dict[str, list[dict[str, Any]]],
    min_n: int,
    metrics: dict[str, Any],
) -> dict[str, Any]:
    """Largest |segment - overall| of the challenger's accuracy (labelled pairs), else of the
    primary metric's challenger mean, else of the challenger's error rate."""
    q = acc.paired.quality
    candidates: list[tuple[str, Any, Any]] = []
    if q.n:
        overall = q.correct[1] / q.n
        candidates = [
            (fn, r, r["accuracy"][1])
            for fn, rows in by_field.items()
            for r in rows
            if r["labelled"] >= min_n
        ]
        metric = "challenger accuracy (label-joined)"
    else:
        overall = None
    if not candidates:
        rate = acc.errors[1] / acc.requests[1] if acc.requests[1] else None
        overall = rate
        candidates = [
            (fn, r, r["error_rate"][1])
            for fn, rows in by_field.items()
            for r in rows
            if r["requests"][1] >= min_n
        ]
        metric = "challenger error rate"
    best = None
    for fn, r, val in candidates:
        if val is None or overall is None:
            continue
        g = abs(val - overall)
        if best is None or g > best[0]:
            best = (g, fn, r["value"], val)
    if best is None:
        return {
            "metric": metric,
            "value": None,
            "state": "not_enough_data",
            "reason": f"no segment with at least {min_n} observations",
        }
    return {
        "metric": metric,
        "value": f(best[0]),
        "segment": f"{best[1]}={best[2]}",
        "segment_value": f(best[3]),
        "overall": f(overall),
        "state": "ok",
    }


def _disparity(by_field: dict[str, list[dict[str, Any]]], min_n: int) -> dict[str, Any]:
    worst = None
    for fn, rows in by_field.items():
        rates = [
            (r["positive_rate"][1], r["value"])
            for r in rows
            if r["predictions"][1] >= min_n and r["positive_rate"][1] is not None
        ]
        if len(rates) < 2:
            continue
        ratio = measures.disparity_ratio([x for x, _ in rates])
        if ratio is not None and (worst is None or ratio < worst[0]):
            lo = min(rates)
            hi = max(rates)
            worst = (ratio, fn, lo, hi)
    if worst is None:
        return {
            "value": None,
            "state": "not_enough_data",
            "reason": f"fewer than two segments with {min_n} challenger decisions",
        }
    return {
        "value": f(worst[0]),
        "field": worst[1],
        "lowest": {"value": worst[2][1], "rate": f(worst[2][0])},
        "highest": {"value": worst[3][1], "rate": f(worst[3][0])},
        "state": "ok",
        "method": "lowest over highest positive-decision rate of the challenger (four-fifths rule)",
    }


def _drift(acc: Accumulator, policy: Policy, reference: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "bands": {"stable": "< 0.1", "moderate": "0.1 - 0.25", "major": ">= 0.25"},
        "fields": {},
    }
    if reference is None:
        out["state"] = "no_reference"
        out["reason"] = "pass --reference-since/--reference-until or --reference-stats"
        return out
    ref_fields = reference.get("fields", {})
    for name, ref in ref_fields.items():
        cur_num = acc.fields.numeric.get(name)
        cur_cat = acc.fields.categorical.get(name)
        if "edges" in ref and cur_num:
            edges = np.asarray(ref["edges"], dtype=float)
            rc = np.asarray(ref["counts"], dtype=float)
            cc = np.zeros(edges.size + 1)
            for b, c in cur_num.items():
                cc[int(np.searchsorted(edges, fine_bin_value(b), side="right"))] += c
            p = measures.psi(rc, cc)
            js = measures.jensen_shannon(rc, cc) if rc.sum() and cc.sum() else None
        elif "categories" in ref and cur_cat:
            cats = sorted(set(ref["categories"]) | set(cur_cat))
            rc = np.asarray([ref["categories"].get(c, 0) for c in cats], dtype=float)
            cc = np.asarray([cur_cat.get(c, 0) for c in cats], dtype=float)
            p = measures.psi(rc, cc)
            js = measures.jensen_shannon(rc, cc) if rc.sum() and cc.sum() else None
        else:
            continue
        out["fields"][name] = {
            "psi": f(p),
            "band": measures.psi_band(p),
            "js_distance": f(js),
            "n": int(cc.sum()),
        }
    out["state"] = "ok"
    out["max_psi"] = f(max((d["psi"] or 0.0 for d in out["fields"].values()), default=None))
    return out


def reference_stats(acc: Accumulator, bins: int = 10) -> dict[str, Any]:
    """Reference statistics (decile edges and counts per numeric field, category counts) of an
    accumulator's captured fields: the format ``--reference-stats`` reads."""
    fields: dict[str, Any] = {}
    for name, c in acc.fields.numeric.items():
        keys = sorted(c)
        vals = np.asarray([fine_bin_value(k) for k in keys])
        cnt = np.asarray([c[k] for k in keys], dtype=float)
        cum = np.cumsum(cnt) / cnt.sum()
        edges = np.unique(
            [
                vals[min(int(np.searchsorted(cum, q)), vals.size - 1)]
                for q in np.linspace(0, 1, bins + 1)[1:-1]
            ]
        )
        counts = np.zeros(edges.size + 1)
        for v, k in zip(vals, cnt, strict=True):
            counts[int(np.searchsorted(edges, v, side="right"))] += k
        fields[name] = {"edges": edges.tolist(), "counts": counts.tolist()}
    for name, cc in acc.fields.categorical.items():
        fields[name] = {"categories": dict(cc.most_common(200))}
    return {"fields": fields}


# ------------------------------------------------------------------------------ assembly
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
        quality = pool.submit(_quality, acc, policy)
        uv = _UnitView(acc)
        report: dict[str, Any] = {
            "version": REPORT_VERSION,
            "experiment": experiment,
            "window": _window(acc, earliest_available),
            "counts": _counts(acc, uv.joined, uv.before_exposure),
            "srm": _srm(acc, policy, split),
            "latency": _latency(acc, policy.alpha, policy.sequential.tau),
            "errors": _errors(acc, policy.alpha),
            "divergence": _divergence(acc, policy),
            "quality": None,  # (keeps the key order)
        }
        metrics = _metrics(acc, policy, uv)
        report["quality"] = quality.result()
    report["metrics"] = metrics
    report["segments"] = _segments(acc, policy, report["metrics"], uv)
    report["drift"] = _drift(acc, policy, reference)
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
