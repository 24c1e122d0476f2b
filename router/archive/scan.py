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
    row_groups: tuple[int, ...] | None = None  # a part of the file: these row groups only


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
             leaves: Mapping[str, Sequence[str]] | None = None) -> pa.Table:  # fmt: skip
    """``columns`` of the archive schema, in that order; absent ones (older files) as nulls,
    and struct columns completed with absent (null) fields (of ``leaves``: those fields only,
    in the schema's order)."""
    want = schema_for(kind)
    arrays = []
    for name in columns:
        typ = want.field(name).type
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
    leaves: Mapping[str, Sequence[str]] | None = None,
) -> pa.Table:  # fmt: skip
    """``columns`` of the rows of ``f`` stored (stream id time) within ``[since, until]``, the
    window the Redis readers select (:mod:`router.capture.reader`); with ``before_ms``, only
    those stored before that millisecond (the rest is read from Redis). ``leaves``: of these
    struct columns, only the named fields are read (and returned: a side's other fields are
    never decoded). A part of a file (``f.row_groups``): the rows of those row groups."""
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
        paths, later = _read_plan(pf, have, present, leaves)
        table = _read(pf, paths, f.row_groups)
        if later:
            table = _read_later(pf, table, later, f.row_groups)
    except UnreadableFile:
        raise
    except FileNotFoundError:
        raise UnreadableFile(f.path, "deleted while being read (retention?)") from None
    except (StoreError, pa.ArrowException, OSError) as exc:
        reason = str(exc).split(": not a readable Parquet file: ", 1)[-1]
        raise UnreadableFile(f.path, f"unreadable ({reason})") from None
    if window:
        stored = pc.cast(table.column("stored_at"), pa.int64())  # ms
        inside = pc.is_valid(stored)
        if since is not None:
            inside = pc.and_(inside, pc.greater_equal(stored, int(since * 1000)))
        if until is not None:
            inside = pc.and_(inside, pc.less_equal(stored, int(until * 1000)))
        if before_ms is not None:
            inside = pc.and_(inside, pc.less(stored, before_ms))
        table = table.filter(inside)
    return _project(table, kind, columns, leaves)


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


def _read_plan(pf: pq.ParquetFile, have: pa.Schema, present: list[str],
               leaves: Mapping[str, Sequence[str]] | None,
               ) -> tuple[list[str], dict[str, list[str]]]:  # fmt: skip
    """The column paths to read: ``struct.field`` for the wanted fields of a struct column of
    ``leaves`` that the file has (the whole column when it has none of them), except those
    the statistics show are null throughout; and, of a struct column read through one field
    only because all its fields may be null, the fields still to read when the struct itself
    is not null in every row (:func:`_read_later`)."""
    stats = _Stats(pf)
    out: list[str] = []
    later: dict[str, list[str]] = {}
    for name in present:
        typ = have.field(name).type
        if not pa.types.is_struct(typ):
            null, repeated = stats.null(name)
            if not null or repeated or name in ("stream_id", "stored_at"):
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
    return out, later


def _read(pf: pq.ParquetFile, paths: list[str], row_groups: tuple[int, ...] | None) -> pa.Table:
    """``paths`` of the file (of ``row_groups`` only, when given)."""
    if row_groups is None:
        return pf.read(columns=paths, use_threads=False)
    return pf.read_row_groups(list(row_groups), columns=paths, use_threads=False)


def _read_later(pf: pq.ParquetFile, table: pa.Table, later: dict[str, list[str]],
                row_groups: tuple[int, ...] | None = None) -> pa.Table:  # fmt: skip
    """Fields left out by :func:`_read_plan` of struct columns that are not null throughout
    after all: read now, the struct column read again whole (of those fields)."""
    for name, paths in later.items():
        col = table.column(name)
        if col.null_count == table.num_rows:
            continue
        first = [f"{name}.{fl.name}" for fl in col.type]
        again = _read(pf, first + paths, row_groups).column(name)
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
