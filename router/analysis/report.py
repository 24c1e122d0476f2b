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

from router.analysis import stats
from router.analysis.accumulate import VARIANTS, Accumulator, fine_bin_value
from router.analysis.data_quality import data_quality_section
from router.analysis.frames import rid_hash
from router.analysis.gates import evaluate
from router.analysis.outcomes_index import OutcomeIndex
from router.analysis.policy import MetricSpec, Policy
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
        "mirrored_pairs": acc.pairs,
        "comparable_pairs": acc.comparable,
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
            "mismatch": False,
            "max_share_diff": None,
        }
    res = stats.srm_test(units[:2], [1 - split, split], policy.srm.alpha, policy.srm.min_share_diff)
    reason = {
        "ok": "units per variant match the configured split"
        if not res.mismatch
        else "units per variant deviate from the configured split",
        "not_enough_data": "fewer than 8 units in an arm",
        "not_applicable": "single-arm split (0 or 1): nothing to compare",
    }[res.state]
    return base | {
        "state": res.state,
        "reason": reason,
        "statistic": f(res.statistic),
        "p_value": f(res.pvalue),
        "mismatch": res.mismatch,
        "max_share_diff": f(res.max_share_diff),
        "method": res.method,
    }


def _hist_summary(h: Any, alpha: float) -> dict[str, Any]:
    out: dict[str, Any] = {"n": h.n}
    for name, q in QUANTILES:
        lo, hi = h.quantile_ci(q, alpha)
        out[name] = f(h.quantile(q))
        out[f"{name}_ci"] = [f(lo), f(hi)]
    return out


def _latency(acc: Accumulator, alpha: float) -> dict[str, Any]:
    per = {}
    for v in (0, 1):
        d = _hist_summary(acc.latency[v], alpha)
        d["mean"] = f(acc.latency_moments[v].mean)
        per[VARIANTS[v]] = d
    m = acc.pair_latency_diff
    diff = stats.paired_mean(m.n, m.s, m.ss, alpha)
    paired: dict[str, Any] = {
        "n": int(m.n),
        "mean_diff_ms": f(diff.estimate),
        "mean_diff_ci": _ci(diff.ci),
        "p_value": f(diff.pvalue),
        "state": diff.state,
        "method": "paired t-test on challenger - champion latency of the same mirrored requests",
        "quantiles": {},
    }
    for name, q in QUANTILES:
        a, b = acc.pair_latency[0].quantile(q), acc.pair_latency[1].quantile(q)
        alo, ahi = acc.pair_latency[0].quantile_ci(q, alpha)
        blo, bhi = acc.pair_latency[1].quantile_ci(q, alpha)
        paired["quantiles"][name] = {
            "champion": f(a),
            "challenger": f(b),
            "delta_ms": f(b - a) if a is not None and b is not None else None,
            # conservative: the challenger's lower bound minus the champion's upper bound
            "delta_lower_ms": f(blo - ahi) if blo is not None and ahi is not None else None,
            "delta_upper_ms": f(bhi - alo) if bhi is not None and alo is not None else None,
        }
    return {"per_variant": per, "paired": paired, "unit": "ms"}


def _errors(acc: Accumulator, alpha: float) -> dict[str, Any]:
    per = {}
    for v in (0, 1):
        n, e = acc.requests[v], acc.errors[v]
        per[VARIANTS[v]] = {
            "n": n,
            "errors": e,
            "rate": f(e / n) if n else None,
            "ci": _ci(stats.wilson_interval(e, n, alpha)),
            "status_classes": dict(sorted(acc.status_classes[v].items())),
        }
    live = stats.proportion_diff(
        acc.errors[0], acc.requests[0], acc.errors[1], acc.requests[1], alpha
    )
    pe = acc.pair_errors
    n = int(pe.sum())
    b, c = int(pe[1, 0]), int(pe[0, 1])  # champion-only errors, challenger-only errors
    paired: dict[str, Any] = {"n": n, "state": "not_enough_data" if n < 2 else "ok"}
    if n:
        d = (c - b) / n
        var = max((b + c) - (c - b) ** 2 / n, 0.0) / (n * n)
        z = float(st.norm.ppf(1 - alpha / 2))
        mc = stats.mcnemar(c, b)
        paired |= {
            "champion_rate": f((pe[1, 0] + pe[1, 1]) / n),
            "challenger_rate": f((pe[0, 1] + pe[1, 1]) / n),
            "delta": f(d),
            "ci": [f(d - z * math.sqrt(var)), f(d + z * math.sqrt(var))],
            "p_value": f(mc.pvalue),
            "method": f"{mc.method} on the discordant pairs; Wald CI for paired proportions",
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
    }


def _divergence(acc: Accumulator, policy: Policy) -> dict[str, Any]:
    kind = acc.kind
    out: dict[str, Any] = {"kind": kind, "pairs": acc.pairs, "comparable": acc.comparable}
    pm = acc.pair_moments
    n = pm.n
    if kind in ("score", "value") and n >= 1:
        mad = pm.sabs / n
        sd_d = pm.syy - 2 * pm.sxy + pm.sxx
        rmse = math.sqrt(max(sd_d / n, 0.0))
        cov = pm.sxy / n - (pm.sx / n) * (pm.sy / n)
        vx = pm.sxx / n - (pm.sx / n) ** 2
        vy = pm.syy / n - (pm.sy / n) ** 2
        pearson = cov / math.sqrt(vx * vy) if vx > 1e-18 and vy > 1e-18 else None
        out |= {"n": int(n), "mean_abs_diff": f(mad), "rmse": f(rmse), "pearson": f(pearson)}
        items = acc.sample.items()
        xs, ys = items[:, 0], items[:, 1]
        out["sample"] = {
            "n": int(xs.size),
            "of": acc.sample.seen,
            "complete": acc.sample.complete,
            "method": "bottom-k sample by a stable hash of request_id",
        }
        out |= _distribution_stats(xs, ys, policy)
        if kind == "score":
            out["flip_rate"] = {str(t): f(acc.flips[i] / n) for i, t in enumerate(acc.thresholds)}
        else:
            diff = stats.paired_mean(n, pm.sy - pm.sx, sd_d, policy.alpha)
            out["mean_signed_diff"] = {
                "estimate": f(diff.estimate),
                "ci": _ci(diff.ci),
                "p_value": f(diff.pvalue),
                "state": diff.state,
            }
    elif kind == "class" and acc.confusion:
        total = sum(acc.confusion.values())
        labels_count: Counter[str] = Counter()
        for (a, b), c in acc.confusion.items():
            labels_count[a] += c
            labels_count[b] += c
        top = [lab for lab, _ in labels_count.most_common(10)]
        idx = {lab: i for i, lab in enumerate(top)}
        mat = np.zeros((len(top) + 1, len(top) + 1), dtype=np.int64)
        for (a, b), c in acc.confusion.items():
            mat[idx.get(a, len(top)), idx.get(b, len(top))] += c
        agree = sum(c for (a, b), c in acc.confusion.items() if a == b)
        full_labels = sorted(labels_count)
        fi = {lab: i for i, lab in enumerate(full_labels)}
        full = np.zeros((len(full_labels), len(full_labels)))
        for (a, b), c in acc.confusion.items():
            full[fi[a], fi[b]] += c
        out |= {
            "n": total,
            "agreement": f(agree / total),
            "cohen_kappa": f(stats.cohen_kappa(full)),
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
    elif kind == "vector" and n >= 1:
        out |= {
            "n": int(n),
            "argmax_agreement": f(acc.vector_agree / n),
            "mean_js_distance": f(acc.vector_js / n),
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
        "psi": f(stats.psi(cx, cy)),
        "psi_band": stats.psi_band(stats.psi(cx, cy)),
        "psi_bins": int(edges.size + 1),
        "ks": {"statistic": f(ks.statistic), "p_value": f(ks.pvalue)},
        "js_distance": f(stats.jensen_shannon(cx, cy)),
        "wasserstein": f(wd),
        "wasserstein_normalised": f(wd / sdx) if sdx > 0 else None,
    }


def _contract(acc: Accumulator, policy: Policy) -> dict[str, Any]:
    n = acc.comparable
    noise = policy.divergence.contract_noise_share
    paths: list[dict[str, Any]] = []
    for (kind, path), c in sorted(acc.contract.items(), key=lambda kv: -kv[1]):
        share = c / n if n else 0.0
        if share > noise:
            paths.append({"path": path, "change": kind, "pairs": c, "share": f(share)})
    return {
        "comparable_pairs": n,
        "noise_share": noise,
        "paths": paths[:100],
        "max_share": f(max((float(p["share"] or 0.0) for p in paths), default=0.0)),
        "method": "per JSON path: share of comparable mirrored pairs where the challenger's field "
        "is missing, extra or of another type; reported above the noise share",
    }


def _quality(acc: Accumulator, policy: Policy) -> dict[str, Any]:
    q = acc.quality
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
        mc = stats.mcnemar(q.b, q.c)
        tests["accuracy"] = {
            "delta": f((q.correct[1] - q.correct[0]) / q.n),
            "p_value": f(mc.pvalue),
            "method": mc.method,
            "discordant": [q.b, q.c],
        }
    ld = q.loss_diff
    if ld.n >= 2:
        pt = stats.paired_mean(ld.n, ld.s, ld.ss, policy.alpha)
        name = "squared_error" if kind == "value" else "log_loss"
        tests[name] = {
            "delta": f(pt.estimate),
            "ci": _ci(pt.ci),
            "p_value": f(pt.pvalue),
            "method": pt.method,
            "state": pt.state,
        }
    if kind == "score":
        items = acc.labelled_sample.items()
        if items.size:
            y, s1, s2 = items[:, 0], items[:, 1], items[:, 2]
            boot = min(y.size, BOOTSTRAP_ROWS)
            a1, a2 = stats.auc(y, s1), stats.auc(y, s2)
            models["champion"]["roc_auc"] = f(a1)
            models["challenger"]["roc_auc"] = f(a2)
            if policy.bootstrap_resamples:
                d, ci = stats.paired_bootstrap_auc_diff(
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
                    "sample": {"n": int(y.size), "of": acc.labelled_sample.seen},
                }
    return out | {"state": "ok", "models": models, "tests": tests}


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
    spec: MetricSpec,
    policy: Policy,
    xs: tuple[float, float] | None,
) -> dict[str, Any]:
    alpha = policy.alpha
    w = stats.welch(mean[0], var[0], n[0], mean[1], var[1], n[1], alpha)
    rel = stats.relative_uplift(mean[0], var[0], n[0], mean[1], var[1], n[1], alpha)
    p_fixed = w.pvalue
    method = w.method
    if spec.type == "proportion" and xs is not None:
        z = stats.two_proportion_ztest(xs[0], n[0], xs[1], n[1])
        p_fixed, method = z.pvalue, f"{z.method} (p-value); Welch CI"
    vd = (var[0] / n[0] + var[1] / n[1]) if min(n) >= 2 else 0.0
    pooled_sd = math.sqrt((var[0] + var[1]) / 2) if min(n) >= 2 else 0.0
    tau = policy.sequential.tau * pooled_sd
    seq = (
        stats.msprt(w.estimate, vd, tau, alpha)
        if w.estimate is not None and vd > 0
        else stats.SequentialResult(None, Interval(None, None), None, state=w.state)
    )
    return {
        "absolute": f(w.estimate),
        "ci": _ci(w.ci),
        "relative": f(rel.estimate),
        "relative_ci": _ci(rel.ci),
        "relative_state": rel.state,
        "p_value": f(p_fixed),
        "sequential_p_value": f(seq.pvalue),
        "sequential_ci": _ci(seq.ci),
        "sequential_tau": f(seq.tau),
        "state": w.state,
        "method": method,
        "sequential_method": seq.method,
        "_variance": vd,
    }


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
            mm = acc.request_metric_moments[metric]
            n = (mm[0].n, mm[1].n)
            mean = (mm[0].mean or 0.0, mm[1].mean or 0.0)
            var = (mm[0].var or 0.0, mm[1].var or 0.0)
            xs = (mm[0].s, mm[1].s)
        else:
            v, t, x, _c = uv.arrays(metric, spec)
            sel = [x[v == i] for i in (0, 1)]
            n = (float(sel[0].size), float(sel[1].size))
            mean = tuple(float(s.mean()) if s.size else 0.0 for s in sel)  # type: ignore[assignment]
            var = tuple(float(s.var(ddof=1)) if s.size > 1 else 0.0 for s in sel)  # type: ignore[assignment]
            xs = (float(sel[0].sum()), float(sel[1].sum()))
            series = _series(v, t, x, spec, policy)
        entry["variants"] = {
            VARIANTS[i]: {
                "n": int(n[i]),
                "mean": f(mean[i]) if n[i] else None,
                "variance": f(var[i]) if n[i] > 1 else None,
            }
            for i in (0, 1)
        }
        up = _uplift(n, mean, var, spec, policy, xs)
        vd = up.pop("_variance")
        entry["uplift"] = up
        entry["mde"] = f(stats.mde(vd, policy.alpha, policy.power)) if vd > 0 else None
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
    if spec.type == "proportion" and 0 < base < 1 and 0 < base + delta < 1:
        need = stats.n_per_arm_proportions(base, base + delta, policy.alpha, policy.power)
    else:
        need = stats.n_per_arm_means(
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
        up = _uplift(n, m, va, spec, policy, None)
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
    for (field_name, value), agg in acc.segments.items():
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
            for item in acc.combo_keys[c]:
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
    q = acc.quality
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
        ratio = stats.disparity_ratio([x for x, _ in rates])
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
        cur_num = acc.drift_numeric.get(name)
        cur_cat = acc.drift_categorical.get(name)
        if "edges" in ref and cur_num:
            edges = np.asarray(ref["edges"], dtype=float)
            rc = np.asarray(ref["counts"], dtype=float)
            cc = np.zeros(edges.size + 1)
            for b, c in cur_num.items():
                cc[int(np.searchsorted(edges, fine_bin_value(b), side="right"))] += c
            p = stats.psi(rc, cc)
            js = stats.jensen_shannon(rc, cc) if rc.sum() and cc.sum() else None
        elif "categories" in ref and cur_cat:
            cats = sorted(set(ref["categories"]) | set(cur_cat))
            rc = np.asarray([ref["categories"].get(c, 0) for c in cats], dtype=float)
            cc = np.asarray([cur_cat.get(c, 0) for c in cats], dtype=float)
            p = stats.psi(rc, cc)
            js = stats.jensen_shannon(rc, cc) if rc.sum() and cc.sum() else None
        else:
            continue
        out["fields"][name] = {
            "psi": f(p),
            "band": stats.psi_band(p),
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
    for name, c in acc.drift_numeric.items():
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
    for name, cc in acc.drift_categorical.items():
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
            "latency": _latency(acc, policy.alpha),
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
        "(p_value_holm)",
        "sequential": f"mSPRT normal mixture, tau = {policy.sequential.tau} x pooled SD",
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
