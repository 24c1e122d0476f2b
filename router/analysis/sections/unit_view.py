"""The per-unit side of one report (computed once, shared by the ``counts``, ``metrics`` and
``segments`` sections): unit-joined outcomes folded in, the units served by a single variant in
a fixed order, and each metric's per-unit values."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from router.analysis.accumulate import Accumulator
from router.analysis.frames import rid_hash
from router.analysis.policy import CupedPolicy, MetricSpec


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


class UnitView:
    """The per-unit side of one report, computed once: unit-joined outcomes folded in, the units
    served by a single variant in a fixed order (by a hash of the unit: deterministic however
    the accumulator was merged, and cheaper to sort than strings), and each metric's arrays."""

    def __init__(self, acc: Accumulator) -> None:
        self.acc = acc
        self.extra, self.joined, self.before_exposure = _unit_values(acc)
        single = acc.units.exposures().filter(~(pl.col("champion") & pl.col("challenger")))
        self.single = single.with_columns(key=rid_hash(pl.col("unit"))).sort("key")
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
        self._units: dict[str, pl.Series] = {}
        self.capping: dict[str, dict[str, Any]] = {}  # per capped metric, what was done

    def arrays(
        self, metric: str, spec: MetricSpec
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if metric not in self._arrays:
            units, (v, t, x, c) = _unit_metric_arrays(self, metric, spec)
            if spec.cap is not None or spec.cap_percentile is not None:
                x, self.capping[metric] = cap_values(x, v, spec)
            self._units[metric], self._arrays[metric] = units, (v, t, x, c)
        return self._arrays[metric]

    def covariate(
        self, metric: str, spec: MetricSpec, cuped: CupedPolicy
    ) -> tuple[np.ndarray, np.ndarray]:
        """The CUPED covariate of each unit of :meth:`arrays` (same order, units without one
        imputed by :func:`impute`) and whether the unit had one."""
        self.arrays(metric, spec)
        frame = covariate_frame(self.acc, metric, spec, cuped)
        c, has = join_covariate(self._units[metric], frame)
        return impute(c, has, spec), has


def cap_values(
    x: np.ndarray, v: np.ndarray, spec: MetricSpec
) -> tuple[np.ndarray, dict[str, Any]]:
    """Winsorize per-unit values at ``spec.cap``, or at the ``spec.cap_percentile`` quantile of
    the pooled values of both arms (GrowthBook's absolute and percentile capping; the cap is an
    upper bound, values below it are kept), and say what was done: the cap, how it was set and
    how many units per arm it touched."""
    if spec.cap is not None:
        cap, how = float(spec.cap), "fixed"
    elif x.size:
        cap, how = float(np.quantile(x, spec.cap_percentile or 1.0)), "pooled percentile"
    else:
        return x, {"method": "pooled percentile", "percentile": spec.cap_percentile, "cap": None,
                   "capped_units": {"champion": 0, "challenger": 0}}  # fmt: skip
    over = x > cap
    per_arm = {"champion": int((over & (v == 0)).sum()), "challenger": int((over & (v == 1)).sum())}
    info = {"method": how, "percentile": spec.cap_percentile, "cap": cap, "capped_units": per_arm}
    return np.minimum(x, cap), info


def covariate_frame(
    acc: Accumulator, metric: str, spec: MetricSpec, cuped: CupedPolicy
) -> pl.DataFrame:
    """Per unit (``unit, c``), its pre-exposure covariate for ``metric``: the unit-joined rows
    of the metric named in ``cuped.covariates`` (any ts), else the metric's own unit-joined rows
    with a ts in ``[first exposure − history_s, first exposure)``; reduced as the metric is
    (``spec.reduce``: sum, max or mean). Units without such rows are left out here: they get 0
    for a sum or max (no recorded activity), the mean over the units with one for a mean
    (:func:`join_covariate`). Either rule keeps the adjusted difference unbiased: the covariate
    is fixed before exposure, whatever it is set to."""
    byu = acc.outcomes.by_unit
    source = cuped.covariates.get(metric)
    empty = pl.DataFrame(schema={"unit": pl.String, "c": pl.Float64})
    if not byu.height:
        return empty
    if source is not None:
        rows = byu.filter(pl.col("metric") == source)
    else:
        ex = acc.units.exposures().select("unit", "first_ts")
        rows = byu.filter(pl.col("metric") == metric).join(ex, on="unit", how="inner").filter(
            (pl.col("ts") != 0)
            & (pl.col("ts") < pl.col("first_ts"))
            & (pl.col("ts") >= pl.col("first_ts") - cuped.history_s)
        )
    if not rows.height:
        return empty
    agg = {"max": pl.col("value").max(), "sum": pl.col("value").sum()}.get(
        spec.reduce, pl.col("value").mean()
    )
    return rows.group_by("unit").agg(c=agg.cast(pl.Float64))


def join_covariate(units: pl.Series, cov: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """``(covariate, has one)`` for ``units`` in their order, 0 where a unit has none."""
    df = pl.DataFrame({"unit": units}).join(cov, on="unit", how="left", maintain_order="left")
    has = df["c"].is_not_null().to_numpy()
    return df["c"].fill_null(0.0).to_numpy(), has


def impute(c: np.ndarray, has: np.ndarray, spec: MetricSpec) -> np.ndarray:
    """Covariate of the units without one: 0 for sum and max metrics, the mean over the units
    with one for mean metrics."""
    if spec.reduce == "mean" and has.any() and not has.all():
        return np.where(has, c, float(c[has].mean()))
    return c


def _unit_metric_arrays(
    uv: UnitView, metric: str, spec: MetricSpec
) -> tuple[pl.Series, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """The units, and (variant, first_ts, value, segment combination) per unit served by a
    single variant; units without an outcome per ``spec.missing``."""
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
    return df["unit"], (
        df["challenger"].cast(pl.Int8).to_numpy(),
        df["first_ts"].to_numpy(),
        df["x"].cast(pl.Float64).to_numpy(),
        df["combo"].to_numpy(),
    )
