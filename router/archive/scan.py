"""Read an archive back: the files of a window, one at a time, and what the window lacks.

:func:`plan` lists the hour partitions of an experiment that overlap a window (by the hour of
the stream id, as the archiver wrote them) and says which hours have no file at all.
:func:`read_file` reads one file's columns (projection) as an Arrow table, rows of the window
only (stored within the window: whole hours outside it are never listed); a file that is not
Parquet, is truncated, or has a foreign schema (another kind, or a column of another type)
raises :class:`UnreadableFile` naming it and why, so a reader skips, counts and reports it.

Files written before a column existed lack it: the column comes back as nulls (schema
evolution only adds nullable columns, :mod:`router.archive.schema`). A column (or side field)
that the row groups' statistics show null in every row is not decoded either: its nulls are
made, the same as reading it would give; a window that holds the whole file (by the
statistics of ``stored_at``) filters nothing.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from router.archive.layout import Hour, PartName, experiment_dir
from router.archive.schema import META_KIND, schema_for
from router.archive.store import ArchiveStore, StoreError


class UnreadableFile(Exception):
    """An archive file skipped: ``path`` and a one-line ``reason``."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


@dataclass(frozen=True, slots=True)
class ArchiveFile:
    path: str  # relative to the archive root
    hour: Hour
    size: int


@dataclass
class Plan:
    """The files of a window, in time order, and the hours of the window without any file."""

    files: list[ArchiveFile] = field(default_factory=list)
    hours: int = 0  # hours of the window (when it is bounded), else hours with files
    empty_hours: list[Hour] = field(default_factory=list)
    other_entries: list[str] = field(default_factory=list)  # not partition files: ignored


def hours_of(store: ArchiveStore, kind: str, experiment: str) -> Iterator[tuple[Hour, str]]:
    """The hour partitions of an experiment in time order: ``(hour, path)``."""
    base = experiment_dir(kind, experiment)
    for day in sorted(store.list_dir(base), key=lambda e: e.name):
        if not day.is_dir:
            continue
        for h in sorted(store.list_dir(f"{base}/{day.name}"), key=lambda e: e.name):
            hour = Hour.parse(f"{day.name}/{h.name}") if h.is_dir else None
            if hour is not None:
                yield hour, f"{base}/{day.name}/{h.name}"


def plan(
    store: ArchiveStore, kind: str, experiment: str, since: float | None, until: float | None,
) -> Plan:  # fmt: skip
    """The ``kind`` files (pairs or outcomes) of hours overlapping ``[since, until]``."""
    out = Plan()
    lo = Hour.of_ts(since) if since is not None else None
    hi = Hour.of_ts(until) if until is not None else None
    seen: set[Hour] = set()
    for hour, rel in hours_of(store, kind, experiment):
        if (lo is not None and hour < lo) or (hi is not None and hour > hi):
            continue
        files = []
        for e in sorted(store.list_dir(rel), key=lambda e: e.name):
            if e.is_dir or e.name.startswith("."):
                continue
            if PartName.parse(e.name) is None and not e.name.endswith(".parquet"):
                out.other_entries.append(f"{rel}/{e.name}")
                continue
            files.append(ArchiveFile(f"{rel}/{e.name}", hour, e.size))
        if files:
            seen.add(hour)
            out.files.extend(files)
    if seen:
        first = lo if lo is not None else min(seen)
        last = hi if hi is not None else max(seen)
        all_hours = [Hour(t) for t in range(first.start, last.start + 1, 3600)]
        out.hours = len(all_hours)
        out.empty_hours = [h for h in all_hours if h not in seen]
    elif lo is not None and hi is not None:
        out.hours = (hi.start - lo.start) // 3600 + 1
        out.empty_hours = [Hour(t) for t in range(lo.start, hi.start + 1, 3600)]
    return out


def _compatible(have: pa.DataType, want: pa.DataType) -> bool:
    if have.equals(want) or pa.types.is_null(have):
        return True
    if pa.types.is_struct(want) and pa.types.is_struct(have):
        by_name = {f.name: f.type for f in have}
        return all(f.name not in by_name or _compatible(by_name[f.name], f.type) for f in want)
    return False


def _project(table: pa.Table, kind: str, columns: Sequence[str],
             leaves: Mapping[str, Sequence[str]] | None = None,
             as_dict: Sequence[str] = (), views: Sequence[str] = ()) -> pa.Table:  # fmt: skip
    """``columns`` of the archive schema, in that order; absent ones (older files) as nulls,
    and struct columns completed with absent (null) fields (of ``leaves``: those fields only,
    in the schema's order); those of ``as_dict`` as read, dictionaries, those of ``views``
    string views."""
    want = schema_for(kind)
    arrays = []
    for name in columns:
        typ = want.field(name).type
        if name in as_dict:
            typ = dictionary_type(typ)
        elif name in views:
            typ = pa.string_view()
        if leaves and name in leaves and pa.types.is_struct(typ):
            typ = pa.struct([fl for fl in typ if fl.name in leaves[name]])
        if name not in table.column_names:
            arrays.append(pa.nulls(table.num_rows, typ))
            continue
        col = table.column(name)
        if not col.type.equals(typ):
            col = _conform(col, typ)
        arrays.append(col)
    return pa.Table.from_arrays(arrays, names=list(columns))


_DICT = pa.dictionary(pa.int32(), pa.string())


def _dictionable(typ: pa.DataType) -> bool:
    """A string column, or a map of strings to strings."""
    if pa.types.is_map(typ):
        return pa.types.is_string(typ.key_type) and pa.types.is_string(typ.item_type)
    return pa.types.is_string(typ)


def dictionary_type(typ: pa.DataType) -> pa.DataType:
    """The type a string column (a map of strings) is read as through ``dictionary``."""
    if pa.types.is_map(typ):
        return pa.map_(_DICT, _DICT)
    return _DICT if pa.types.is_string(typ) else typ


def plain_strings(table: pa.Table) -> pa.Table:
    """``table`` with its string-view columns as plain strings (Arrow 22 has no take, so no
    filter, for string views)."""
    for i, fl in enumerate(table.schema):
        if pa.types.is_string_view(fl.type):
            table = table.set_column(i, fl.name, table.column(i).cast(pa.string()))
    return table


def _read_views(store: ArchiveStore, f: ArchiveFile, table: pa.Table,
                names: list[str]) -> pa.Table | None:  # fmt: skip
    """``table`` (the file's other columns, all its rows) with the string columns ``names``
    read by polars, as string views (polars' own strings: no copy either way); None when
    polars cannot read them (then Arrow does)."""
    import polars as pl

    try:
        df = pl.read_parquet(store.path(f.path), columns=names, parallel="none",
                             hive_partitioning=False, use_statistics=False)  # fmt: skip
    except (pl.exceptions.PolarsError, OSError):
        return None
    if df.height != table.num_rows:
        return None
    for name in names:
        table = table.append_column(name, df[name].to_arrow(compat_level=pl.CompatLevel.newest()))
    return table


def _read(store: ArchiveStore, f: ArchiveFile, pf: pq.ParquetFile, paths: list[str],
          as_dict: list[str]) -> tuple[pa.Table, list[str]]:  # fmt: skip
    """The column ``paths`` of ``pf``, the string leaves of the ``as_dict`` columns as
    dictionaries; and the columns that came back so. A map read so is read a row group at a
    time (Arrow makes no chunked nested dictionaries); should the file's pages not allow it
    (a dictionary that changes within a column chunk), the file is read plain."""
    if not as_dict:
        return pf.read(columns=paths, use_threads=False), []
    leaf = _leaf_map(pf)
    md = pf.metadata
    names = [md.schema.column(j).path for c in as_dict for j in leaf.get(c, ([], False))[0]]
    dpf = store.parquet(f.path, metadata=md, read_dictionary=names)
    nested = any(leaf.get(c, ([], False))[1] for c in as_dict)
    try:
        if nested and md.num_row_groups > 1:
            parts = [dpf.read_row_group(i, columns=paths, use_threads=False)
                     for i in range(md.num_row_groups)]  # fmt: skip
            return pa.concat_tables(parts), as_dict
        return dpf.read(columns=paths, use_threads=False), as_dict
    except pa.ArrowNotImplementedError:
        return pf.read(columns=paths, use_threads=False), []


def _conform(col: pa.ChunkedArray, typ: pa.DataType) -> pa.ChunkedArray:
    if pa.types.is_struct(typ) and pa.types.is_struct(col.type):
        chunks = []
        for chunk in col.chunks:
            have = {f.name for f in chunk.type}
            fields = [chunk.field(f.name).cast(f.type) if f.name in have
                      else pa.nulls(len(chunk), f.type) for f in typ]  # fmt: skip
            chunks.append(pa.StructArray.from_arrays(fields, fields=list(typ),
                                                     mask=chunk.is_null()))  # fmt: skip
        return pa.chunked_array(chunks, typ)
    return col.cast(typ)


def read_file(
    store: ArchiveStore, f: ArchiveFile, kind: str, columns: Sequence[str],
    since: float | None = None, until: float | None = None, *, before_ms: int | None = None,
    leaves: Mapping[str, Sequence[str]] | None = None, dictionary: Sequence[str] = (),
    views: Sequence[str] = (),
) -> pa.Table:  # fmt: skip
    """``columns`` of the rows of ``f`` stored (stream id time) within ``[since, until]``, the
    window the Redis readers select (:mod:`router.capture.reader`); with ``before_ms``, only
    those stored before that millisecond (the rest is read from Redis). ``leaves``: of these
    struct columns, only the named fields are read (and returned: a side's other fields are
    never decoded). ``dictionary``: of these columns, a string column (or a map of strings:
    its keys and values) comes back as ``dictionary<int32, string>`` (:func:`dictionary_type`),
    straight from the file's dictionary pages (decoding them costs a fraction of making the
    strings); a file whose values cannot be read so comes back plain, as without it.
    ``views``: of these string columns, those read come back as ``string_view``, decoded by
    polars' Parquet reader (a local file: about half of Arrow's work for such columns, and
    what polars takes without a copy)."""
    try:
        pf = store.parquet(f.path)
        have = pf.schema_arrow  # (converted from the Parquet schema at each call: once)
        meta_kind = (have.metadata or {}).get(META_KIND)
        if meta_kind is not None and meta_kind.decode() != kind:
            raise UnreadableFile(f.path, f"foreign schema: a {meta_kind.decode()} file among "
                                         f"the {kind}")  # fmt: skip
        want = schema_for(kind)
        for name in dict.fromkeys([*columns, "stream_id"]):  # (the rows' names: always)
            if name in have.names and not _compatible(have.field(name).type,
                                                      want.field(name).type):  # fmt: skip
                raise UnreadableFile(f.path, f"foreign schema: column {name} is "
                                             f"{have.field(name).type}, expected "
                                             f"{want.field(name).type}")  # fmt: skip
        missing_core = [c for c in ("stream_id",) if c not in have.names]
        if missing_core:
            raise UnreadableFile(f.path, "foreign schema: no stream_id column (not written "
                                         "by router archive)")  # fmt: skip
        present = [c for c in columns if c in have.names]
        window = (since, until, before_ms) != (None, None, None)
        if window and _inside(pf, have, since, until, before_ms):
            window = False  # (every row is: no filter, stored_at read only when asked for)
        if "stored_at" not in present and window:
            present.append("stored_at")
        paths, later, const = _read_plan(pf, have, present, leaves)
        as_dict = [c for c in dictionary if c in present and _dictionable(have.field(c).type)]
        if const and not paths:  # (a file of one row: its stream ids are read)
            paths = ["stream_id"]
        polars = [c for c in views if c in paths and c not in as_dict
                  and pa.types.is_string(have.field(c).type)] if store.local else []  # fmt: skip
        if polars and len(polars) < len(paths):
            rest = [p for p in paths if p not in polars]
            table, as_dict = _read(store, f, pf, rest, as_dict)
            both = _read_views(store, f, table, polars)
            if both is None:  # (Arrow reads them after all)
                table, as_dict = _read(store, f, pf, paths, as_dict)
                polars = []
            else:
                table = both
        else:
            table, as_dict = _read(store, f, pf, paths, as_dict)
            polars = []
        for name, value in const.items():  # (in the order of the columns: _project)
            table = table.append_column(name, _repeat(value, have.field(name).type,
                                                      name in as_dict, table.num_rows))
        if later:
            table = _read_later(pf, table, later)
    except UnreadableFile:
        raise
    except FileNotFoundError:
        raise UnreadableFile(f.path, "deleted while being read (retention?)") from None
    except (StoreError, pa.ArrowException, OSError) as exc:
        reason = str(exc).split(": not a readable Parquet file: ", 1)[-1]
        raise UnreadableFile(f.path, f"unreadable ({reason})") from None
    if window:  # (Arrow filters no string views: their columns as plain strings first)
        table = plain_strings(table)
        polars = []
        stored = pc.cast(table.column("stored_at"), pa.int64())  # ms
        inside = pc.is_valid(stored)
        if since is not None:
            inside = pc.and_(inside, pc.greater_equal(stored, int(since * 1000)))
        if until is not None:
            inside = pc.and_(inside, pc.less_equal(stored, int(until * 1000)))
        if before_ms is not None:
            inside = pc.and_(inside, pc.less(stored, before_ms))
        table = table.filter(inside)
    return _project(table, kind, columns, leaves, as_dict, polars)


# ---------------------------------------------------------------------- statistics
# A file's column chunk statistics say when a column holds nothing but nulls (the v2 columns
# of a v1 record, the repeat side when no repeat was sampled, ``raw`` when every entry fit the
# columns): such a column is not decoded, its nulls are made instead (:func:`_project`), which
# is exactly what reading it would return. A file without statistics (another writer, or
# statistics switched off) is read whole, as before.


_LAYOUTS: dict[tuple[bytes, int], dict[str, tuple[list[int], bool]]] = {}


def _leaf_map(pf: pq.ParquetFile) -> dict[str, tuple[list[int], bool]]:
    """Of each top-level column and each field of a struct (``name``, ``name.field``), the
    indices of its Parquet leaf columns and whether any is repeated (in a list or a map);
    worked out once per Arrow schema the files were written with."""
    md = pf.metadata
    arrow = (md.metadata or {}).get(b"ARROW:schema")
    key = (arrow, md.num_columns) if arrow is not None else None
    out = _LAYOUTS.get(key) if key is not None else None
    if out is not None:
        return out
    out = {}
    ps = md.schema
    for j in range(md.num_columns):
        col = ps.column(j)
        parts = col.path.split(".")
        for path in dict.fromkeys((parts[0], ".".join(parts[:2]))):
            idx, rep = out.get(path, ([], False))
            out[path] = ([*idx, j], rep or col.max_repetition_level > 0)
    if key is not None and len(_LAYOUTS) < 64:  # (a few archiver versions)
        _LAYOUTS[key] = out
    return out


class _Stats:
    """Which columns of a file are null in every row, by its row groups' statistics."""

    def __init__(self, pf: pq.ParquetFile) -> None:
        md = pf.metadata
        self.leaves = _leaf_map(pf)
        self.groups = [md.row_group(i) for i in range(md.num_row_groups)]

    def null(self, path: str) -> tuple[bool, bool]:
        """Whether every value of every leaf of ``path`` is null (as far as the statistics
        tell: False when some row group has none), and whether a leaf is repeated (then a
        null-count equal to the rows does not mean null values: an empty list has none)."""
        idx, repeated = self.leaves.get(path, ([], False))
        if not idx:
            return False, repeated
        for rg in self.groups:
            n = rg.num_rows
            for j in idx:
                st = rg.column(j).statistics
                if st is None or not st.has_null_count or st.null_count != n:
                    return False, repeated
        return True, repeated

    def one(self, path: str) -> tuple[Any] | None:
        """``(value,)`` when every row of a (non-repeated, one-leaf) column holds that value
        by the statistics (minimum equal to maximum in every row group, no null)."""
        idx, repeated = self.leaves.get(path, ([], False))
        if len(idx) != 1 or repeated or not self.groups:
            return None
        values = set()
        for rg in self.groups:
            st = rg.column(idx[0]).statistics
            if st is None or not st.has_min_max or not st.has_null_count or st.null_count:
                return None
            lo, hi = st.min, st.max
            if lo != hi or not isinstance(lo, (bool, int, str)):
                return None
            values.add((type(lo), lo))
        return (values.pop()[1],) if len(values) == 1 else None


def _read_plan(pf: pq.ParquetFile, have: pa.Schema, present: list[str],
               leaves: Mapping[str, Sequence[str]] | None,
               ) -> tuple[list[str], dict[str, list[str]], dict[str, Any]]:  # fmt: skip
    """The column paths to read: ``struct.field`` for the wanted fields of a struct column of
    ``leaves`` that the file has (the whole column when it has none of them), except those
    the statistics show are null throughout; of a struct column read through one field
    only because all its fields may be null, the fields still to read when the struct itself
    is not null in every row (:func:`_read_later`); and the columns (integers, booleans,
    strings) the statistics show hold one value in every row, with that value: made, not
    decoded (the version, the experiment, ``mirrored``)."""
    stats = _Stats(pf)
    out: list[str] = []
    later: dict[str, list[str]] = {}
    const: dict[str, Any] = {}
    for name in present:
        typ = have.field(name).type
        if not pa.types.is_struct(typ):
            null, repeated = stats.null(name)
            if null and not repeated and name not in ("stream_id", "stored_at"):
                continue
            one = stats.one(name) if _repeatable(typ) and name != "stream_id" else None
            if one is not None:
                const[name] = one[0]
            else:
                out.append(name)
            continue
        got = [fl.name for fl in typ]
        fields = [fl for fl in leaves[name] if fl in got] if leaves and name in leaves else got
        if not fields:
            out.append(name)  # (none of the wanted fields: the whole column, for its nulls)
            continue
        data: list[str] = []
        maybe: list[str] = []  # (null statistics, but under a list: empty lists have none)
        for fl in fields:
            null, repeated = stats.null(f"{name}.{fl}")
            if not null:
                data.append(fl)
            elif repeated:
                maybe.append(fl)
        if data:
            out.extend(f"{name}.{fl}" for fl in fields if fl in data or fl in maybe)
        else:  # one field tells where the struct is null; the others are read if needed
            probe = (maybe or fields)[0]
            out.append(f"{name}.{probe}")
            if maybe[1:]:
                later[name] = [f"{name}.{fl}" for fl in maybe[1:]]
    return out, later, const


def _repeatable(typ: pa.DataType) -> bool:
    return pa.types.is_integer(typ) or pa.types.is_boolean(typ) or pa.types.is_string(typ)


def _repeat(value: Any, typ: pa.DataType, as_dict: bool, n: int) -> pa.Array:
    """``n`` times ``value`` (of a column of type ``typ``, a dictionary if ``as_dict``)."""
    if as_dict:
        zeros = pa.array(np.zeros(n, np.int32))
        return pa.DictionaryArray.from_arrays(zeros, pa.array([value], typ))
    if pa.types.is_string(typ) and isinstance(value, str):
        # (the buffers made at once: pa.repeat of a string took 22 ms at 300,000 rows, an
        # eighth of the page's parse; offsets of a string array are int32)
        b = value.encode()
        if n * len(b) < 2**31:
            offsets = np.arange(n + 1, dtype=np.int32) * np.int32(len(b))
            return pa.Array.from_buffers(typ, n, [None, pa.py_buffer(offsets), pa.py_buffer(b * n)])
    elif pa.types.is_integer(typ) and value is not None:
        return pa.array(np.full(n, value, dtype=typ.to_pandas_dtype()), typ)
    return pa.repeat(pa.scalar(value, typ), n)


def _read_later(pf: pq.ParquetFile, table: pa.Table, later: dict[str, list[str]]) -> pa.Table:
    """Fields left out by :func:`_read_plan` of struct columns that are not null throughout
    after all: read now, the struct column read again whole (of those fields)."""
    for name, paths in later.items():
        col = table.column(name)
        if col.null_count == table.num_rows:
            continue
        first = [f"{name}.{fl.name}" for fl in col.type]
        again = pf.read(columns=first + paths, use_threads=False).column(name)
        table = table.set_column(table.column_names.index(name), name, again)
    return table


def _inside(pf: pq.ParquetFile, have: pa.Schema, since: float | None, until: float | None,
            before_ms: int | None) -> bool:  # fmt: skip
    """Whether every row of the file was stored within the window, by the statistics of
    ``stored_at`` (milliseconds, never null): then no row is filtered out."""
    if "stored_at" not in have.names:
        return False
    if not have.field("stored_at").type.equals(pa.timestamp("ms", tz="UTC")):
        return False
    idx, _repeated = _leaf_map(pf).get("stored_at", ([], False))
    if len(idx) != 1:
        return False
    md = pf.metadata
    for i in range(md.num_row_groups):
        st = md.row_group(i).column(idx[0]).statistics
        if st is None or not st.has_min_max or not st.has_null_count or st.null_count:
            return False
        lo, hi = st.min_raw, st.max_raw
        if not isinstance(lo, int) or not isinstance(hi, int):
            return False
        if since is not None and lo < int(since * 1000):
            return False
        if until is not None and hi > int(until * 1000):
            return False
        if before_ms is not None and hi >= before_ms:
            return False
    return True
