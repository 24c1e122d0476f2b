"""Several challengers in one stream: a view per challenger, forced requests and crossover units
(pure; no I/O).

A record names the variant that served it (``variant``, default ``served``) and the challenger
whose answer is in its ``challenger`` side (``arm``, default ``"challenger"``); a request
mirrored to several challengers carries the others in ``shadows``. The analysis of an A/B/n
experiment is one two-arm analysis per challenger X over its **view** of the stream
(:func:`arm_view`): every record served by the champion or by X, with X's answer (from
``challenger`` or ``shadows``) as the challenger side; records served by another challenger are
not in X's view. So each challenger is compared with the same champion, paired where mirrored
and live where split, by the unchanged two-arm machinery.

Also here, before any view:

- **forced** records (a QA request that forced its variant) are counted and left out of every
  statistic;
- **crossover units** (seen served by more than one variant in the window: after a salt change,
  a config error, or a client sending different unit ids) are found across all variants
  (:class:`UnitVariants`); each view then counts them as "in both variants", which takes them
  out of the SRM check and of every unit-level statistic (metrics, segments), as Statsig and
  Eppo do. Request-level sections (latency, errors, pairs) keep their requests.

:class:`ArmSet` folds pages into one :class:`~router.analysis.accumulate.Accumulator` per
challenger. The challengers must be known before the first page (a champion-served record
belongs to every view); when a page names a challenger not known yet, the set marks itself
``restart`` and only collects names from then on: the caller reads the source again with
:attr:`ArmSet.discovered` (:func:`router.analysis.run.analyze` and
:func:`router.analysis.report.build_report` do).

Folded in parts (an archive's tasks on processes or Dask, hourly rollups), each part is an
:class:`ArmSet` of its own records; parts merge (:meth:`ArmSet.merge`) only when they hold the
same views. The views the whole window needs are those a sequential fold of the parts in order
would end with (:func:`agreed_arms`); a part folded with other views (it never named a
challenger that a later part names, so its champion-served records are missing from that
challenger's view) is folded again with the agreed ones (:mod:`router.analysis.distribute`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import numpy as np
import orjson
import polars as pl

from router.analysis.accumulate import Accumulator, prefold
from router.analysis.frames import Page
from router.analysis.outcomes_index import OutcomeIndex
from router.analysis.units import _Pending, shards

DEFAULT_ARM = "challenger"
MAX_CROSSOVER_EXAMPLES = 10
_SIDE = ("h_in", "he", "hl", "hs", "hp")


def _quoted(name: str) -> str:
    return "$['" + name.replace("\\", "\\\\").replace("'", "\\'") + "']"


def page_arms(cols: pl.DataFrame) -> list[str]:
    """The challengers a page names (served, ``arm`` and ``shadows``): ``challenger`` first,
    then by name (a page is in request-id hash order, so first-seen order means nothing)."""
    # the distinct served variants and arms in one polars plan (a plan costs more than the
    # work on a page of a two-arm stream, where each column holds one or two values); in no
    # particular order, as the names are sorted below
    served, armed = cols.select(
        pl.col("vn").unique().implode(), pl.col("arm").drop_nulls().unique().implode()
    ).row(0)
    names: list[str] = []
    for v in served:
        if v not in (None, "champion", DEFAULT_ARM) and v not in names:
            names.append(v)
    for v in armed:
        if v not in names and v != DEFAULT_ARM:
            names.append(v)
    if cols["shadows"].null_count() < cols.height:
        for name in _shadow_names(cols["shadows"].drop_nulls()):
            if name not in names:
                names.append(name)
    involved_default = DEFAULT_ARM in served or DEFAULT_ARM in armed
    return ([DEFAULT_ARM] if involved_default else []) + sorted(names)


def _shadow_names(texts: pl.Series) -> list[str]:
    """The keys of the ``shadows`` objects (decoded by polars at once; line by line when their
    values' types disagree between records)."""
    try:
        dtype = texts.str.json_decode(infer_schema_length=None).dtype
        if isinstance(dtype, pl.Struct):
            return [f.name for f in dtype.fields]
    except pl.exceptions.PolarsError:
        pass
    out: dict[str, None] = {}
    for text in texts.to_list():
        try:
            doc = orjson.loads(text)
        except orjson.JSONDecodeError:
            continue
        if isinstance(doc, dict):
            out.update(dict.fromkeys(doc))
    return list(out)


def arm_view(cols: pl.DataFrame, arm: str) -> pl.DataFrame:
    """The rows of challenger ``arm``'s view of a page (see the module docstring), forced rows
    already removed: the champion's and ``arm``'s records, the challenger side being ``arm``'s
    answer (null when ``arm`` did not answer this request)."""
    served_by = pl.col("vn")
    df = cols.filter((served_by == "champion") | (served_by == arm))
    if not df.height:
        return df
    mine = pl.col("arm") == arm
    if df["shadows"].null_count() == df.height:
        if bool(df.select(mine.fill_null(True).all()).item()):
            return df  # every challenger side is already arm's (a two-arm stream)
        keep = mine.fill_null(False)
        df = df.with_columns(
            [pl.when(keep).then(pl.col(c)).alias(c) for c in _SIDE[2:]],
            he=pl.when(keep).then(pl.col("he")).otherwise(True),  # as for a record without one
        ).with_columns(h_in=pl.col("h_in") & keep, contract=pl.when(keep).then(pl.col("contract")))
        return df.with_columns(mirrored=pl.col("mirrored") & pl.col("h_in") & pl.col("c_in"))
    path = _quoted(arm)
    sh = pl.col("shadows")
    in_shadow = sh.str.json_path_match(path).is_not_null().fill_null(False) & ~mine.fill_null(False)
    status = sh.str.json_path_match(path + ".status").cast(pl.Int64, strict=False)
    err = sh.str.json_path_match(path + ".error")
    pred = sh.str.json_path_match(path + ".prediction").cast(df.schema["hp"], strict=False)
    lat = sh.str.json_path_match(path + ".latency_ms").cast(pl.Float64, strict=False)
    keep = mine.fill_null(False)
    df = df.with_columns(
        h_in=keep | in_shadow,
        he=pl.when(keep).then(pl.col("he")).when(in_shadow)
        .then(err.is_not_null() | status.is_null() | (status >= 500)).otherwise(True),
        hl=pl.when(keep).then(pl.col("hl")).when(in_shadow).then(lat),
        hs=pl.when(keep).then(pl.col("hs")).when(in_shadow).then(status),
        hp=pl.when(keep).then(pl.col("hp")).when(in_shadow).then(pred),
        # the response-contract diff is computed for the record's own pair only
        contract=pl.when(keep).then(pl.col("contract")),
    )  # fmt: skip
    return df.with_columns(mirrored=pl.col("c_in") & pl.col("h_in"))


@dataclass(slots=True)
class PageArms:
    """What :meth:`ArmSet.add_page` needs of a page without forced requests, made where the
    page is parsed (:func:`prefold_arms`): the challengers it names, its distinct (unit,
    served variant) pairs."""

    cols: pl.DataFrame  # the page's columns these are of (valid for these only)
    names: list[str]
    unit_variants: dict[int, pl.DataFrame]  # by unit shard (router.analysis.units.shards)


def prefold_arms(page: Page, outcomes: OutcomeIndex, kind: str = "score") -> Page:
    """:func:`router.analysis.accumulate.prefold` and :class:`PageArms`: the per-page work of
    the arm set and of its accumulators that no state enters, on the page's parse thread
    (measured at 10M archived records: a tenth of the folding thread's time)."""
    cols = page.cols
    if cols.height and not cols["forced"].any():
        page.arms = PageArms(cols, page_arms(cols), shards(_unit_variant_rows(cols)))
    return prefold(page, outcomes, kind)


def _unit_variant_rows(cols: pl.DataFrame) -> pl.DataFrame:
    return cols.select("unit", "vn").drop_nulls().unique()


def _reduce_unit_variants(df: pl.DataFrame) -> pl.DataFrame:
    return df.unique(["unit", "vn"])


class UnitVariants:
    """The distinct (unit, served variant) pairs of the window, compacted as they grow, so
    memory follows units x variants, not records."""

    def __init__(self) -> None:
        self._pairs = _Pending({"unit": pl.String(), "vn": pl.String()}, _reduce_unit_variants)

    def add(self, cols: pl.DataFrame, rows: dict[int, pl.DataFrame] | None = None) -> None:
        """The pairs of ``cols`` (``rows``: those already, by shard: :class:`PageArms`)."""
        if rows is None:
            self._pairs.add(_unit_variant_rows(cols))
        else:
            self._pairs.add_shards(rows)

    def merge(self, o: UnitVariants) -> None:
        self._pairs.add(o._pairs.table())

    def crossover(self) -> pl.DataFrame:
        """One row per unit served by more than one variant: unit, the sorted variants."""
        t = self._pairs.table()
        if not t.height:
            return pl.DataFrame(schema={"unit": pl.String, "variants": pl.List(pl.String)})
        g = t.group_by("unit").agg(pl.col("vn").sort().alias("variants"))
        return g.filter(pl.col("variants").list.len() > 1).sort("unit")


def agreed_arms(given: list[str] | None, parts: Iterable[list[str]]) -> list[str]:
    """The views a window folded in parts needs: those a sequential fold of the parts' records
    in order ends with. ``given``: the challengers asked for (``--shares``), else None;
    ``parts``: each part's :meth:`ArmSet.part_names`, in order. Without ``given``: every
    challenger named, in order of first mention (the default ``challenger`` when none is);
    with it, ``given`` when nothing else is named, else the named ones of ``given`` followed by
    the others (as :meth:`ArmSet.restart_arms` after a sequential fold)."""
    named: list[str] = []
    for names in parts:
        named.extend(n for n in names if n not in named)
    if given is None:
        return named or [DEFAULT_ARM]
    others = [n for n in named if n not in given]
    if not others:
        return list(given)
    return [n for n in [*given, *others] if n in named]


class ArmSet:
    """One accumulator per challenger view, plus forced counts and the unit/variant table."""

    def __init__(
        self, make: Callable[[], Accumulator] | None, arms: list[str] | None = None
    ) -> None:
        self.make = make  # (None once folded and sent elsewhere: closures do not pickle)
        self.arms: dict[str, Accumulator] = {}
        self.order = list(arms) if arms else [DEFAULT_ARM]
        self.fixed = arms is not None
        self.discovered: list[str] = list(self.order)
        self.seen: list[str] = []  # challengers the data named, in first-seen order
        self.restart = False
        self.folded = False  # a page was folded (the challengers can no longer change)
        self._empty_pages: list[Page] = []  # pages without rows before that (replayed then)
        self.forced: Counter[str] = Counter()
        # requests of a unit inside a target's mirror share that were not mirrored, by
        # (target, reason): throttled (guard), budget / budget_burst (shadow budget),
        # body_too_large, not_queued
        self.mirror_skipped: Counter[tuple[str, str]] = Counter()
        self.unit_variants = UnitVariants()
        self.expected = 0  # records expected (Accumulator.expect_records), for views made later
        if make is not None:
            for name in self.order:
                self.arms[name] = make()

    def add_page(self, page: Page) -> None:
        cols = page.cols
        if cols.height and cols["forced"].any():
            forced = cols.filter(pl.col("forced"))
            for name, n in forced.group_by("vn").len().iter_rows():
                self.forced[str(name)] += int(n)
            cols = cols.filter(~pl.col("forced"))
        pre = page.arms if page.arms is not None and page.arms.cols is cols else None
        names = pre.names if pre is not None else page_arms(cols) if cols.height else []
        if not self.fixed and not self.folded and names:
            # nothing folded yet: the first page that names challengers sets them
            assert self.make is not None, "an ArmSet sent back is not folded into"
            make = self.make
            self.order = list(names)
            self.discovered = list(names)
            self.arms = {n: make() for n in names}
            self.expect_records(self.expected)
            for acc in self.arms.values():  # pages without rows seen before (unreadable files)
                for empty in self._empty_pages:
                    acc.add_page(empty)
        for name in names:
            if name not in self.seen:
                self.seen.append(name)
            if name not in self.discovered:
                self.discovered.append(name)
                if name not in self.arms:
                    self.restart = True
        if self.restart:
            return  # only names are collected now (the caller reads again)
        if not cols.height:  # (nothing to view: only unreadable files, or forced requests)
            empty = replace(page, cols=cols)
            if not self.folded:
                self._empty_pages.append(empty)
            for acc in self.arms.values():
                acc.add_page(empty)
            return
        self.folded = True
        if cols["skipped"].null_count() < cols.height:
            self._count_skipped(cols["skipped"].drop_nulls())
        self.unit_variants.add(cols, pre.unit_variants if pre is not None else None)
        for name, acc in self.arms.items():
            view = cols if len(self.arms) == 1 and name == DEFAULT_ARM and not any(
                n != DEFAULT_ARM for n in names
            ) else arm_view(cols, name)  # fmt: skip
            acc.add_page(replace(page, cols=view))

    def expect_records(self, n: int) -> None:
        """About ``n`` records are to come: each view is told
        (:meth:`Accumulator.expect_records`)."""
        self.expected = n
        for acc in self.arms.values():
            acc.expect_records(n)

    def views(self) -> list[str]:
        """The challengers this set holds a view of, in order."""
        return list(self.arms)

    def part_names(self) -> list[str]:
        """The challengers this part's records named, in the order a sequential fold meets
        them (see :func:`agreed_arms`)."""
        return [n for n in self.discovered if n in self.seen]

    def merge(self, o: ArmSet) -> None:
        """Fold another part (records after this one's, the same views in any order) into
        this one."""
        if set(o.views()) != set(self.views()) or self.restart or o.restart:
            raise ValueError(f"cannot merge views {o.views()} into {self.views()}")
        for name, acc in self.arms.items():
            acc.merge(o.arms[name])
        self.forced.update(o.forced)
        self.mirror_skipped.update(o.mirror_skipped)
        self.unit_variants.merge(o.unit_variants)
        for name in o.part_names():
            if name not in self.seen:
                self.seen.append(name)
            if name not in self.discovered:
                self.discovered.append(name)
        self.folded = self.folded or o.folded

    def request_ids(self) -> np.ndarray:
        """The request-id fingerprints of the records of every view, sorted, each once (a
        champion-served request is in each view)."""
        ids = [acc.seen.values() for acc in self.arms.values()]
        if len(ids) == 1:
            return ids[0]
        both = np.concatenate(ids)
        both.sort(kind="stable")  # (sorted parts: merged)
        return both[np.concatenate(([True], both[1:] != both[:-1]))]

    def holds(self, ids: np.ndarray) -> np.ndarray:
        """Which of the sorted fingerprints ``ids`` some view of this set holds."""
        found = np.zeros(ids.size, dtype=bool)
        for acc in self.arms.values():
            found |= acc.seen.contains(ids, presorted=True)
        return found

    def _count_skipped(self, texts: pl.Series) -> None:
        try:
            decoded = texts.str.json_decode(infer_schema_length=None)
        except pl.exceptions.PolarsError:
            decoded = None
        if decoded is not None and isinstance(decoded.dtype, pl.Struct):
            for f in decoded.dtype.fields:
                counts = decoded.struct.field(f.name).drop_nulls().value_counts()
                for reason, n in counts.iter_rows():
                    self.mirror_skipped[(f.name, str(reason))] += int(n)
            return
        for text in texts.to_list():  # types disagree between records: one by one
            try:
                doc = orjson.loads(text)
            except orjson.JSONDecodeError:
                continue
            if isinstance(doc, dict):
                for target, reason in doc.items():
                    self.mirror_skipped[(str(target), str(reason))] += 1

    def restart_arms(self) -> list[str]:
        """The challengers to read the source again with: those the data named (the default
        ``challenger`` only when some record involved it)."""
        return [n for n in self.discovered if n in self.seen] or [DEFAULT_ARM]

    def mark_crossover(self) -> pl.DataFrame:
        """Find the crossover units and make every view count them in both its variants (out
        of the SRM check and the unit-level statistics); return them (:meth:`UnitVariants.
        crossover`)."""
        cross = self.unit_variants.crossover()
        if cross.height:
            for acc in self.arms.values():
                acc.units.mark_both(cross["unit"])
        return cross

    @property
    def primary(self) -> Accumulator:
        return self.arms[self.names[0]]

    @property
    def names(self) -> list[str]:
        """The challengers with data (all of them when none has)."""
        with_data = [n for n in self.arms if n in self.seen]
        return with_data or list(self.arms)
