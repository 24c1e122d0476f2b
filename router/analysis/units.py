"""Per-unit state of the live split, columnar and mergeable (pure; no I/O).

For each unit (user, account) the analysis needs: which variants served it (a unit seen in both
is excluded from uplift and counted), how many requests it made, when it was first exposed and
its segment then, the sum, count and maximum of each outcome metric joined through its requests,
and for ``per: request`` metrics the sum and count of its requests' reduced values (the unit
sums of a ratio metric, whose variance is clustered by unit). Pages of records add
their per-unit summaries as small polars frames; the pending frames are compacted (concatenated
and re-aggregated) once they outgrow the compacted table, so memory follows the number of
units, not of records. Every aggregate is a sum, max, min or "segment at the minimum", so
``merge`` is exact.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import polars as pl

EXPOSURE_SCHEMA: dict[str, pl.DataType] = {
    "unit": pl.String(),
    "champion": pl.Boolean(),
    "challenger": pl.Boolean(),
    "first_ts": pl.Float64(),
    "combo": pl.Int64(),
    "requests": pl.Int64(),
}
METRIC_SCHEMA: dict[str, pl.DataType] = {
    "unit": pl.String(),
    "metric": pl.Int64(),
    "s": pl.Float64(),
    "n": pl.Int64(),
    "mx": pl.Float64(),
}
_MIN_COMPACT = 200_000  # rows pending before a first compaction (all shards)
SHARDS = 8
_SHARD_SEED = 0x5EED


def exposure_rows(
    unit: pl.Series, variant: np.ndarray, ts: np.ndarray, combo: np.ndarray
) -> pl.DataFrame:
    """A page's exposures as :class:`UnitTable` takes them (rows without a unit dropped)."""
    df = pl.DataFrame(
        {
            "unit": unit,
            "champion": variant == 0,
            "challenger": variant == 1,
            "first_ts": ts,
            "combo": combo.astype(np.int64),
            "requests": np.ones(len(unit), dtype=np.int64),
        }
    )
    return df.filter(pl.col("unit").is_not_null()) if unit.null_count() else df


def metric_rows(unit: pl.Series, metric: np.ndarray, value: np.ndarray) -> pl.DataFrame:
    """Outcome values joined through requests as :class:`UnitTable` takes them."""
    return pl.DataFrame(
        {"unit": unit, "metric": metric.astype(np.int64), "s": value, "n": 1, "mx": value},
        schema_overrides={"n": pl.Int64},
    ).filter(pl.col("unit").is_not_null())


def reduce_exposures(df: pl.DataFrame) -> pl.DataFrame:
    return df.group_by("unit").agg(
        pl.col("champion").max(),
        pl.col("challenger").max(),
        pl.col("first_ts").min(),
        # the segment at first exposure (the earliest row wins a tie: arg_min is the first)
        pl.col("combo").get(pl.col("first_ts").arg_min()),
        pl.col("requests").sum(),
    )


def reduce_metrics(df: pl.DataFrame) -> pl.DataFrame:
    return df.group_by("unit", "metric").agg(
        pl.col("s").sum(), pl.col("n").sum(), pl.col("mx").max()
    )


def shards(df: pl.DataFrame) -> dict[int, pl.DataFrame]:
    """The rows of ``df`` by the shard of their unit (see :class:`_Pending`)."""
    if not df.height:
        return {}
    shard = (pl.col("unit").hash(_SHARD_SEED) % SHARDS).alias("_shard")
    split = df.with_columns(shard).partition_by("_shard", as_dict=True, include_key=False)
    return {int(k): frame for (k,), frame in split.items()}


class _Part:
    """Frames waiting to be reduced, compacted when they outgrow the last reduction."""

    def __init__(self, reduce: Callable[[pl.DataFrame], pl.DataFrame], least: int) -> None:
        self.reduce = reduce
        self.least = least
        self.frames: list[pl.DataFrame] = []
        self.rows = 0
        self.compacted = 0

    def add(self, df: pl.DataFrame) -> None:
        self.frames.append(df)
        self.rows += df.height
        if self.rows - self.compacted > max(self.least, self.compacted):
            self.table()

    def table(self) -> pl.DataFrame | None:
        if not self.frames:
            return None
        if len(self.frames) > 1 or self.rows != self.compacted:
            out = self.reduce(pl.concat(self.frames))
            self.frames = [out]
            self.rows = self.compacted = out.height
        return self.frames[0]


class _Pending:
    """A table reduced by unit, in :data:`SHARDS` parts by a hash of the unit: each part is
    compacted on its own, so a compaction (a concatenation and a group-by: about three times
    the rows it reduces) works on an eighth of the units at a time (measured at 1M units and
    50M records: the re-fold's peak was a compaction of the whole table, 200-300 MB above
    the table itself)."""

    def __init__(
        self, schema: dict[str, pl.DataType], reduce: Callable[[pl.DataFrame], pl.DataFrame]
    ) -> None:
        self.schema = schema
        self.reduce = reduce
        self.parts = [_Part(reduce, _MIN_COMPACT // SHARDS) for _ in range(SHARDS)]

    def add(self, df: pl.DataFrame, reduced: bool = False) -> None:
        if not df.height:
            return
        if not reduced:
            # reduced first: a page of an hour's records has a tenth as many distinct units
            # as rows (measured: 31,533 in 297,619), so the compactions see a tenth of them
            df = self.reduce(df)
        self.add_shards(shards(df))

    def add_shards(self, split: dict[int, pl.DataFrame]) -> None:
        """Reduced rows already split by :func:`shards`."""
        for k, frame in split.items():
            self.parts[k].add(frame)

    def recode(self, fn: Callable[[pl.DataFrame], pl.DataFrame]) -> None:
        """Replace each shard's table by ``fn`` of it (a column recoded, the units kept)."""
        for p in self.parts:
            t = p.table()
            if t is not None and t.height:
                p.frames = [fn(t)]

    def table(self) -> pl.DataFrame:
        tables = [t for t in (p.table() for p in self.parts) if t is not None]
        if not tables:
            return pl.DataFrame(schema=self.schema)
        return pl.concat(tables, rechunk=False) if len(tables) > 1 else tables[0]


class UnitTable:
    def __init__(self) -> None:
        self._exposures = _Pending(EXPOSURE_SCHEMA, reduce_exposures)
        self._metrics = _Pending(METRIC_SCHEMA, reduce_metrics)
        self._request_values = _Pending(METRIC_SCHEMA, reduce_metrics)

    def add_reduced(self, exposures: dict[int, pl.DataFrame] | None,
                    metrics: dict[int, pl.DataFrame] | None) -> None:  # fmt: skip
        """A page's rows as :func:`exposure_rows` and :func:`metric_rows` give them (units may
        repeat), reduced by :func:`reduce_exposures` and :func:`reduce_metrics` and split by
        :func:`shards` (see :func:`router.analysis.accumulate.prefold`)."""
        if exposures is not None:
            self._exposures.add_shards(exposures)
        if metrics is not None:
            self._metrics.add_shards(metrics)

    def add_request_values(self, unit: pl.Series, metric: int, value: np.ndarray) -> None:
        """Reduced values of a ``per: request`` metric, one row per request that has one."""
        df = pl.DataFrame(
            {"unit": unit, "metric": np.full(len(unit), metric, dtype=np.int64), "s": value,
             "n": 1, "mx": value},
            schema_overrides={"n": pl.Int64},
        ).filter(pl.col("unit").is_not_null())  # fmt: skip
        self._request_values.add(df)

    def renumber_metrics(self, ids: np.ndarray) -> None:
        """Metric ``i`` becomes metric ``ids[i]`` (another outcome index's numbering)."""

        def recode(t: pl.DataFrame) -> pl.DataFrame:
            return t.with_columns(pl.Series("metric", ids[t["metric"].to_numpy()], pl.Int64))

        self._metrics.recode(recode)
        self._request_values.recode(recode)

    def merge(self, o: UnitTable, combo_map: np.ndarray) -> None:
        """Fold in another table; ``combo_map[i]`` is this table's id of the other's combo i."""
        ex = o.exposures()
        if ex.height:
            mapped = pl.Series("combo", combo_map[ex["combo"].to_numpy()], dtype=pl.Int64)
            self._exposures.add(ex.with_columns(mapped), reduced=True)
        self._metrics.add(o.metrics(), reduced=True)  # (tables: a row per unit, or per metric)
        self._request_values.add(o.request_values(), reduced=True)

    def exposures(self) -> pl.DataFrame:
        """One row per unit: unit, champion, challenger (served it), first_ts, combo, requests."""
        return self._exposures.table()

    def metrics(self) -> pl.DataFrame:
        """One row per (unit, metric id): sum, count and max of its request-joined values."""
        return self._metrics.table()

    def request_values(self) -> pl.DataFrame:
        """One row per (unit, metric id) of a ``per: request`` metric: the sum (``s``), count
        (``n``) and maximum of its requests' reduced values."""
        return self._request_values.table()

    def mark_both(self, units: pl.Series) -> None:
        """Count ``units`` (crossover units: served by another variant too, see
        :mod:`router.analysis.arms`) as in both variants, which leaves them out of the SRM
        check and of every unit-level statistic; their first exposure and requests stay."""
        ex = self.exposures()
        hit = ex.filter(pl.col("unit").is_in(units.implode()))
        if hit.height:
            self._exposures.add(
                hit.with_columns(
                    champion=pl.lit(True),
                    challenger=pl.lit(True),
                    first_ts=pl.lit(float("inf")),
                    requests=pl.lit(0, pl.Int64),
                )
            )

    def counts(self) -> list[int]:
        """Units served only by the champion, only by the challenger, and by both."""
        ex = self.exposures()
        if not ex.height:
            return [0, 0, 0]
        c, h = ex["champion"].to_numpy(), ex["challenger"].to_numpy()
        return [int((c & ~h).sum()), int((h & ~c).sum()), int((c & h).sum())]
