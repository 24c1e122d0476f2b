"""The ``metrics`` section: per outcome metric of the live split, challenger minus champion with
Welch's test and the delta method (fixed horizon and always valid), the MDE, the sample size and
its ETA, and the uplift by exposure cohort over time; Holm-adjusted p-values across metrics;
beside the uplift, its CUPED-adjusted form (:mod:`router.analysis.cuped`) under ``cuped``."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import polars as pl

from router.analysis import cuped, sample_size, sequential, stats
from router.analysis.accumulate import VARIANTS, Accumulator
from router.analysis.jsonsafe import f
from router.analysis.policy import MetricSpec, Policy
from router.analysis.sections import counts
from router.analysis.sections.unit_view import (
    UnitView,
    cap_values,
    covariate_frame,
    impute,
    join_covariate,
)
from router.analysis.sketches import CoMoments
from router.analysis.stats import Interval


def _uplift(
    n: tuple[float, float],
    mean: tuple[float, float],
    var: tuple[float, float],
    policy: Policy,
    tau_var: tuple[float, float] | None = None,
    rel: stats.RatioResult | None = None,
    base: float | None = None,
) -> dict[str, Any]:
    """Challenger − champion of one metric: the absolute uplift with Welch's test (its p-value
    and interval from the same test, for proportions too: unpooled, as gbstats), the relative
    uplift with the delta method (which counts the control mean's uncertainty), and both in
    always-valid form (mSPRT). ``n`` are the independent units (clusters) per arm and ``var``
    their per-unit variance (for a ``per: request`` metric, the delta-method variance of the
    ratio of unit sums). The CUPED-adjusted form passes adjusted means and variances, the
    unadjusted variances as ``tau_var`` (the mixture's spread is a prior on the effect, which the
    adjustment does not change), its relative uplift ``rel`` and the champion's unadjusted mean
    ``base`` (the relative scale)."""
    alpha = policy.alpha
    w = stats.welch(mean[0], var[0], n[0], mean[1], var[1], n[1], alpha)
    if rel is None:
        rel = stats.relative_uplift(mean[0], var[0], n[0], mean[1], var[1], n[1], alpha)
    ok = w.state == stats.OK
    vd = (var[0] / n[0] + var[1] / n[1]) if ok else 0.0
    tv = tau_var or var
    pooled_sd = math.sqrt(max((tv[0] + tv[1]) / 2, 0.0)) if ok else 0.0
    tau = policy.sequential.tau * pooled_sd
    seq = (
        stats.msprt(w.estimate, vd, tau, alpha)
        if ok and w.estimate is not None
        else stats.SequentialResult(None, Interval(None, None), None, state=w.state)
    )
    rel_seq: list[float | None] = [None, None]
    if ok and rel.state == stats.OK and rel.estimate is not None and rel.variance:
        # the same mixture on the relative scale: tau in units of the control mean
        rtau = tau / abs(mean[0] if base is None else base)
        _p, lo, hi = sequential.normal_mixture_ci(rel.estimate, rel.variance, rtau, alpha)
        rel_seq = [f(lo), f(hi)]
    return {
        "absolute": f(w.estimate),
        "ci": w.ci.as_list(),
        "relative": f(rel.estimate),
        "relative_ci": rel.ci.as_list(),
        "relative_sequential_ci": rel_seq,
        "relative_state": rel.state,
        "p_value": f(w.pvalue),
        "sequential_p_value": f(seq.pvalue),
        "sequential_ci": seq.ci.as_list(),
        "sequential_tau": f(seq.tau),
        "state": w.state,
        "method": w.method,
        "sequential_method": seq.method,
        "_variance": vd,
    }


def _request_metric_arms(
    acc: Accumulator, uv: UnitView, metric: str, spec: MetricSpec, policy: Policy
) -> tuple[list[dict[str, float]], _Cuped | None]:
    """Per arm, a ``per: request`` metric as a ratio of unit sums (GrowthBook's and Statsig's
    ratio metrics): each unit served by one variant is a cluster with ``X`` = the sum of its
    requests' values and ``N`` = its requests (with ``missing: exclude``, its requests that
    have a value); a request without a unit is a cluster of one. The mean is ``ΣX / ΣN`` and
    the per-cluster variance the delta method's
    ``(s²_X − 2 R s_XN + R² s²_N) / N̄²`` (equals gbstats ``RatioStatistic``). With CUPED on,
    also each arm's co-moments of (covariate, linearised ratio) and the covariate counts."""
    df = _request_units(acc, uv, metric, spec)
    v = df["challenger"].cast(pl.Int8).to_numpy()
    x, d = df["s"].cast(pl.Float64).to_numpy(), df["d"].to_numpy()
    cup: _Cuped | None = None
    if policy.cuped.enabled:
        c, has = join_covariate(df["unit"], covariate_frame(acc, metric, spec, policy.cuped))
        c = impute(c, has, spec)
        solos = [acc.request_metric_moments[metric][i] for i in (0, 1)]
        sels = [v == i for i in (0, 1)]

        def comoments(z: np.ndarray) -> tuple[CoMoments, CoMoments]:
            a, b = (
                cuped.ratio_comoments(
                    z[sel], x[sel], d[sel], (solo.n, solo.mu, solo.m2)
                )
                for sel, solo in zip(sels, solos, strict=True)
            )
            return a, b

        cup = _Cuped(comoments, c, has, [int(has[v == i].sum()) for i in (0, 1)])
    out = []
    for i in (0, 1):
        co = CoMoments()
        co.add_arrays(x[v == i], d[v == i])
        solo = acc.request_metric_moments[metric][i]  # requests without a unit: clusters of 1
        co.merge(CoMoments(solo.n, solo.mu, 1.0, solo.m2, 0.0, 0.0))
        ratio, var = stats.ratio_variance(co.n, co.mx, co.my, co.cxx, co.cyy, co.cxy)
        out.append({"clusters": co.n, "requests": co.my * co.n, "mean": float(ratio),
                    "var": float(var)})  # fmt: skip
    return out, cup


def _request_units(
    acc: Accumulator, uv: UnitView, metric: str, spec: MetricSpec
) -> pl.DataFrame:
    """Per unit served by a single variant, for a ``per: request`` metric: unit, challenger,
    requests, first_ts, ``s`` (the sum of its values: the ratio's numerator, capped when the
    metric is: :func:`~router.analysis.sections.unit_view.cap_values`) and ``d`` (the requests
    counted: the denominator)."""
    mid = acc.outcomes.metric_id(metric)
    rv = acc.units.request_values()
    if mid is not None and rv.height:
        vals = rv.filter(pl.col("metric") == mid).select("unit", "s", "n")
    else:
        vals = pl.DataFrame(schema={"unit": pl.String, "s": pl.Float64, "n": pl.Int64})
    df = uv.single.select("unit", "challenger", "requests", "first_ts").join(
        vals, on="unit", how="left"
    )
    df = df.with_columns(pl.col("s").fill_null(0.0), pl.col("n").fill_null(0))
    den = pl.col("requests") if spec.missing_as_zero else pl.col("n")
    df = df.with_columns(d=den.cast(pl.Float64)).filter(pl.col("d") > 0)
    if spec.cap is not None or spec.cap_percentile is not None:
        v = df["challenger"].cast(pl.Int8).to_numpy()
        x, uv.capping[metric] = cap_values(df["s"].cast(pl.Float64).to_numpy(), v, spec)
        df = df.with_columns(s=pl.Series(x))
    return df


def _request_frame(
    acc: Accumulator, uv: UnitView, metric: str, spec: MetricSpec
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(variant, first exposure, sum of values, requests counted) per unit served by a single
    variant, for a ``per: request`` metric."""
    df = _request_units(acc, uv, metric, spec)
    return (
        df["challenger"].cast(pl.Int8).to_numpy(),
        df["first_ts"].cast(pl.Float64).to_numpy(),
        df["s"].cast(pl.Float64).to_numpy(),
        df["d"].to_numpy(),
    )


def _request_series(
    acc: Accumulator, uv: UnitView, metric: str, spec: MetricSpec, policy: Policy,
    points: int = 12,
) -> list[dict[str, Any]]:
    """Uplift of a ``per: request`` metric by cumulative exposure cohort (the units first
    exposed up to each time, as :func:`_series`), each cohort's ratio of unit sums with its
    delta-method variance; requests without a unit have no exposure time and are left out."""
    v, t, x, d = _request_frame(acc, uv, metric, spec)
    if t.size < 4:
        return []
    order = np.argsort(t, kind="stable")
    v, t, x, d = v[order], t[order], x[order], d[order]
    out = []
    for cut in np.linspace(t[0], t[-1], points + 1)[1:]:
        k = int(np.searchsorted(t, cut, side="right"))
        arms = []
        for i in (0, 1):
            sel = v[:k] == i
            co = CoMoments()
            co.add_arrays(x[:k][sel], d[:k][sel])
            arms.append(co)
        if min(co.n for co in arms) < 2:
            continue
        rv = [stats.ratio_variance(co.n, co.mx, co.my, co.cxx, co.cyy, co.cxy) for co in arms]
        n = (float(arms[0].n), float(arms[1].n))
        up = _uplift(n, (float(rv[0][0]), float(rv[1][0])), (float(rv[0][1]), float(rv[1][1])),
                     policy)  # fmt: skip
        out.append({"ts": f(cut), "n": [int(n[0]), int(n[1])], "absolute": up["absolute"],
                    "ci": up["ci"], "sequential_ci": up["sequential_ci"]})  # fmt: skip
    return out


class _Cuped:
    """A metric's CUPED inputs: per unit the covariate ``c`` (imputed where ``has`` is false),
    ``comoments(z)`` giving each arm's co-moments of a per-unit covariate ``z`` and the metric
    (or its linearisation), and per arm how many units had a covariate."""

    def __init__(
        self,
        comoments: Callable[[np.ndarray], tuple[CoMoments, CoMoments]],
        c: np.ndarray,
        has: np.ndarray,
        with_covariate: list[int],
    ) -> None:
        self.comoments, self.c, self.has = comoments, c, has
        self.with_covariate = with_covariate


def _unit_comoments(
    v: np.ndarray, y: np.ndarray
) -> Callable[[np.ndarray], tuple[CoMoments, CoMoments]]:
    """Each arm's co-moments of a per-unit covariate and the unit metric ``y``."""

    def comoments(z: np.ndarray) -> tuple[CoMoments, CoMoments]:
        arms = []
        for i in (0, 1):
            co = CoMoments()
            co.add_arrays(z[v == i], y[v == i])
            arms.append(co)
        return arms[0], arms[1]

    return comoments


def _cuped_entry(
    metric: str,
    cup: _Cuped,
    n: tuple[float, float],
    mean: tuple[float, float],
    var: tuple[float, float],
    policy: Policy,
) -> dict[str, Any]:
    """The ``cuped`` part of a metric's entry: the adjusted uplift (same keys as ``uplift``),
    theta, the covariate's source and coverage, and the variance reduction."""
    cp = policy.cuped
    source = cp.covariates.get(metric)
    out: dict[str, Any] = {
        "covariate": (
            {"source": "metric", "metric": source}
            if source
            else {"source": "history", "history_s": cp.history_s}
        ),
        "units_with_covariate": {VARIANTS[i]: cup.with_covariate[i] for i in (0, 1)},
        "missing_rule": "units without a pre-exposure value get 0 (sum and max metrics) or the "
        "mean over the units with one (mean metrics), and a has-history indicator as a second "
        "covariate",
    }
    if not sum(cup.with_covariate):
        return out | {"state": cuped.NO_COVARIATE, "adjusted": None}
    res = cuped.adjust_with_indicator(cup.comoments, cup.c, cup.has, policy.alpha)
    if res.means is None or res.variances is None or res.diff is None:
        return out | {"state": res.state, "adjusted": None}
    up = _uplift(n, res.means, res.variances, policy, tau_var=var, rel=res.relative,
                 base=mean[0])  # fmt: skip
    vd = up.pop("_variance")
    up["method"] = res.method
    up["means"] = {VARIANTS[i]: f(res.means[i]) for i in (0, 1)}
    return out | {
        "state": res.state,
        "theta": f(res.theta),
        "theta_has_history": f(res.theta_indicator),
        "correlation": f(res.correlation),
        "variance_reduction": f(res.variance_reduction),
        "adjusted": up,
        "mde": f(sample_size.mde(vd, policy.alpha, policy.power)) if vd > 0 else None,
    }


def metrics_section(acc: Accumulator, policy: Policy, uv: UnitView) -> dict[str, Any]:
    out: dict[str, Any] = {}
    duration = counts.duration(acc) or 0.0
    for metric, (spec, inferred) in acc.specs.items():
        entry: dict[str, Any] = {
            "type": spec.type,
            "per": spec.per,
            "inferred": inferred,
            "reduce": spec.reduce,
            "missing": "zero" if spec.missing_as_zero else "exclude",
        }
        series: list[dict[str, Any]] = []
        cup: _Cuped | None = None
        if spec.per == "request":
            arms, cup = _request_metric_arms(acc, uv, metric, spec, policy)
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
            series = _request_series(acc, uv, metric, spec, policy)
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
            if policy.cuped.enabled:
                c, has = uv.covariate(metric, spec, policy.cuped)
                cup = _Cuped(_unit_comoments(v, x), c, has,
                             [int(has[v == i].sum()) for i in (0, 1)])  # fmt: skip
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
        if metric in uv.capping:
            entry["capping"] = uv.capping[metric]
        if cup is not None:
            entry["cuped"] = _cuped_entry(metric, cup, n, mean, var, policy)
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
