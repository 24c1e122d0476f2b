"""Records and outcomes read from a Parquet archive (``router archive``) into the analysis.

The same pages and outcome rows as from JSONL or Redis, so the report over an archive equals
the report over the same records read any other way: an archive file's columns are turned into
the analyzer's record columns (:func:`record_frame`) and judged by the same checks
(:func:`router.analysis.frames.prepare_frame`); entries the archiver kept whole in ``raw`` (not
JSON, a field of another type) are judged as lines. Only the columns the analysis folds are
read, and only the hour partitions of the window (records: stored from ``since`` to ``until``
plus the replay slack, as from Redis; outcomes: stored from ``since`` on, whatever their hour,
since outcomes arrive hours or days after their requests). One file is read at a time per
parse thread, so memory is bounded by the largest file (the archiver writes at most
``archive.max_buffer_records`` rows a file), not by the window.

A file that cannot be read (truncated, corrupt, a foreign schema) is skipped, named and
counted in :class:`Coverage`, never a crash; so are the window's hours without any file.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, overload

import numpy as np
import orjson
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from router.analysis.frames import (
    OUTCOME_SCHEMA,
    Chunk,
    Invalid,
    Page,
    check_outcome_frame,
    parse_outcomes,
    prepare_frame,
    prepare_records,
)
from router.analysis.outcomes_index import OutcomeIndex
from router.archive.layout import Hour, PartName
from router.archive.scan import (
    ArchiveFile,
    UnreadableFile,
    hours_of,
    plain_strings,
    plan,
    read_file,
)
from router.archive.store import ArchiveStore

# (extra: the keys the archive schema does not know, A/B/n's among them; see record_frame)
# (stored_at: read_file reads it itself when a window filters the rows)
# (stream_id: read only when a row is named, see _Names)
RECORD_COLUMNS = (
    "v", "experiment", "request_id", "ts", "unit", "served",
    "mirrored", "segment", "champion", "challenger", "contract", "champion_repeat",
    "contract_repeat", "extra", "raw",
)  # fmt: skip
# (the stream id only names a bad row or one kept whole: read again then, see _OutcomeIds)
OUTCOME_COLUMNS = (*OUTCOME_SCHEMA, "raw")
MAX_NAMED_FILES = 20
MAX_NAMED_HOURS = 48


@dataclass
class Coverage:
    """What an archive window held: files read, hours without data, files skipped."""

    uri: str = ""
    hours: int = 0
    empty_hours: list[Hour] = field(default_factory=list)
    files: int = 0
    bytes: int = 0
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    unreadable_count: int = 0
    outcome_files: int = 0
    executor: str = "threads"
    tasks: int = 1
    cross_task_duplicates: int = 0  # request ids folded in two tasks (see .distribute)
    redis_from: float | None = None  # records stored from then on came from Redis (stitched)
    latest_archived: float | None = None  # the newest record stored in the archive (unix s)
    ends_early: bool = False  # the window ends after the newest archived record (a lag)
    rollups: dict[str, Any] | None = None  # --rollups: hours merged and re-folded (.rollups)

    def skip(self, exc: UnreadableFile) -> None:
        self.unreadable_count += 1
        if len(self.unreadable) < MAX_NAMED_FILES:
            self.unreadable.append((exc.path, exc.reason))

    def merge(self, o: Coverage) -> None:
        self.unreadable_count += o.unreadable_count
        room = MAX_NAMED_FILES - len(self.unreadable)
        self.unreadable.extend(o.unreadable[:max(0, room)])

    def as_dict(self) -> dict[str, Any]:
        return {
            "uri": self.uri,
            "hours": self.hours,
            "hours_without_data": len(self.empty_hours),
            "empty_hour_ranges": _ranges(self.empty_hours)[:MAX_NAMED_HOURS],
            "files": self.files,
            "bytes": self.bytes,
            "outcome_files": self.outcome_files,
            "executor": self.executor,
            "tasks": self.tasks,
            "cross_task_duplicates": self.cross_task_duplicates,
            "redis_from": self.redis_from,
            "latest_archived": self.latest_archived,
            "ends_before_window": self.ends_early,
            "rollups": self.rollups,
            "unreadable_files": {
                "count": self.unreadable_count,
                "examples": [{"path": p, "reason": r} for p, r in self.unreadable],
            },
        }


def _iso(t: int) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:00Z")


def _ranges(hours: list[Hour]) -> list[list[str]]:
    """Consecutive empty hours as ``[first hour start, last hour end]`` (ISO-8601)."""
    out: list[list[int]] = []
    for h in sorted(hours):
        if out and out[-1][1] == h.start:
            out[-1][1] = h.end
        else:
            out.append([h.start, h.end])
    return [[_iso(a), _iso(b)] for a, b in out]


# ---------------------------------------------------------------------- records
def _side_field(c: pl.Expr, name: str, dtype: Any, text: bool = True) -> pl.Expr:
    """One field of a side as the record schema reads it from a line (``text``: the side's
    ``prediction_text`` is not null throughout)."""
    if name == "prediction":
        pred = (pl.coalesce(c.struct.field("prediction_text"), c.struct.field("prediction"))
                if text else c.struct.field("prediction"))  # fmt: skip
        return pred.cast(pl.Float64, strict=False) if dtype == pl.Float64 else pred
    if name == "usage":  # JSON text in the archive; the fields the schema reads from it
        assert isinstance(dtype, pl.Struct)
        usage = c.struct.field("usage")
        return pl.struct([
            usage.str.json_path_match(f"$.{f.name}").cast(f.dtype, strict=False).alias(f.name)
            for f in dtype.fields
        ])  # fmt: skip
    return c.struct.field(name).cast(dtype)


def _side(name: str, dtype: pl.DataType, text: bool = True, nulls: bool = True) -> pl.Expr:
    """A side struct with the fields (and types) of the record schema's side ``dtype``
    (``nulls``: the side is null in some row; else the struct needs no mask, the same)."""
    assert isinstance(dtype, pl.Struct)
    c = pl.col(name)
    fields = [_side_field(c, f.name, f.dtype, text).alias(f.name) for f in dtype.fields]
    if not nulls:
        return pl.struct(fields).alias(name)
    return pl.when(c.is_not_null()).then(pl.struct(fields)).alias(name)


def _segment_text(df: pl.DataFrame) -> tuple[pl.Expr, list[str]]:
    """The segment map as the JSON text a record's segment has in a line (key order kept),
    through its distinct values (by their hash); and those texts in first-seen order. (The
    general way, for maps too long for :func:`segment_codes`.)"""
    hashed = df.select(pl.col("segment").hash(1)).to_series()
    first = hashed.is_first_distinct()
    distinct = df["segment"].filter(first)
    texts: list[str] = []
    hashes: list[int] = []
    for value, h in zip(distinct.to_list(), hashed.filter(first).to_list(), strict=True):
        if value is None:
            continue
        texts.append(orjson.dumps(dict(value)).decode())
        hashes.append(h)
    if not texts:
        return pl.lit(None, pl.String).alias("segment"), []
    expr = pl.lit(hashed.replace_strict(hashes, texts, default=None, return_dtype=pl.String))
    return pl.when(pl.col("segment").is_not_null()).then(expr).alias("segment"), texts


def segment_codes(col: pa.ChunkedArray) -> tuple[np.ndarray, list[str]] | None:
    """Each row's segment map (``map<string, string>``, its keys and values dictionaries or
    plain) as a number into its distinct JSON texts (the text a record's segment has in a line,
    key order kept), -1 for none; and those texts in first-seen order. Numbered in numpy from
    the dictionary codes of each map's entries, the text made once per distinct map. None when
    some map has too many entries to be numbered so (:func:`_segment_text` then)."""
    texts: dict[str, int] = {}
    parts: list[np.ndarray] = []
    for chunk in col.chunks:
        got = _chunk_codes(chunk)
        if got is None:
            return None
        codes, local = got
        lut = np.array([texts.setdefault(t, len(texts)) for t in local] + [-1], dtype=np.int32)
        parts.append(lut[codes])  # (-1: the last, -1)
    codes = np.concatenate(parts) if parts else np.zeros(0, np.int32)
    return codes, list(texts)


def _ints(arr: pa.Array) -> np.ndarray:
    """An Arrow integer array as numpy, nulls as -1 (through polars: pyarrow's own conversion
    imports pandas, a second of CPU once)."""
    s = pl.Series(arr)
    return (s.fill_null(-1) if s.null_count() else s).to_numpy()


def _encoded(arr: pa.Array) -> pa.DictionaryArray:
    out = arr if isinstance(arr, pa.DictionaryArray) else pc.dictionary_encode(arr)
    assert isinstance(out, pa.DictionaryArray)
    return out


def _chunk_codes(chunk: pa.MapArray) -> tuple[np.ndarray, list[str]] | None:
    """:func:`segment_codes` of one chunk: each map's entries (key code, value code) are the
    digits of one number; the distinct numbers are renumbered in first-seen order."""
    n = len(chunk)
    if not n:
        return np.zeros(0, dtype=np.int32), []
    keys, items = _encoded(chunk.keys), _encoded(chunk.items)
    off = _ints(chunk.offsets)  # (int32, into the whole children: a slice's start)
    lens = np.diff(off)
    longest = int(lens.max()) if n else 0
    nv = len(items.dictionary) + 1  # (a null value: one more)
    base = len(keys.dictionary) * nv + 1  # (entry digits 1..base-1: no map is 0)
    bits = longest * np.log2(base) if longest else 0.0
    if bits >= 62:
        return None
    dt: type[np.signedinteger[Any]] = np.int32 if bits < 30 else np.int64  # (the usual: small)
    a, b = int(off[0]), int(off[-1])
    ki = _ints(keys.indices)[a:b]
    vi = _ints(items.indices)[a:b]  # (-1: a null value)
    digit: np.ndarray = ki.astype(dt)
    digit *= nv
    digit += vi
    digit += 2  # (a null value: 1)
    if longest:
        powers = [base**j for j in range(longest)]
        if int(lens.min()) == longest:  # (every map the same length: the usual segments)
            rows = digit.reshape(n, longest)
            code = rows[:, 0].copy()
            for j in range(1, longest):  # (a column at a time: numpy's row sums are slow)
                code += rows[:, j] * dt(powers[j])
        else:
            place = np.arange(b - a, dtype=np.int64) - np.repeat(off[:-1] - a, lens)
            sums = np.zeros(b - a + 1, dtype=np.int64)
            np.cumsum(digit * np.array(powers, dtype=np.int64)[place], out=sums[1:])
            code = (sums[off[1:] - a] - sums[off[:-1] - a]).astype(dt)  # (no overflow: 62 bits)
        code += 1
    else:
        code = np.ones(n, dtype=dt)  # (every map empty)
    if chunk.null_count:
        code[~pl.Series(chunk.is_valid()).to_numpy()] = 0
    # the distinct numbers (0: no map), then their order of first appearance
    top = int(code.max()) + 1
    if top <= max(1 << 16, 4 * n):
        present = np.zeros(top, dtype=bool)
        present[code] = True
        present[0] = False
        values = np.flatnonzero(present)
        lut = np.full(top, -1, dtype=np.int32)
        lut[values] = np.arange(values.size, dtype=np.int32)
        inv = lut[code]
    else:
        values, inv64 = np.unique(code, return_inverse=True)
        inv = inv64.astype(np.int32).reshape(-1)
        if values.size and values[0] == 0:
            values, inv = values[1:], inv - 1
    k = int(values.size)
    m = 1024
    while True:  # (the first rows show every map, nearly always)
        seen, first = np.unique(inv[:m], return_index=True)
        seen, first = seen[seen >= 0], first[seen >= 0]
        if first.size == k or m >= n:
            break
        m *= 16
    order = np.argsort(first, kind="stable")
    rank = np.empty(k + 1, dtype=np.int32)
    rank[seen[order]] = np.arange(k, dtype=np.int32)
    rank[k] = -1
    kd, vd = keys.dictionary.to_pylist(), items.dictionary.to_pylist()
    texts = []
    for row in first[order].tolist():
        lo, hi = int(off[row]) - a, int(off[row + 1]) - a
        pairs = zip(ki[lo:hi].tolist(), vi[lo:hi].tolist(), strict=True)
        value = {kd[kc]: (vd[vc] if vc >= 0 else None) for kc, vc in pairs}
        texts.append(orjson.dumps(value).decode())
    return rank[inv], texts  # (-1: rank[-1], -1)


def _constant(col: pa.ChunkedArray) -> str | None:
    """The one value of a dictionary column that holds one value in every row, else None."""
    if not len(col) or col.null_count:
        return None
    values = {v for chunk in col.chunks if len(chunk)
              for v in (chunk.dictionary.to_pylist() if isinstance(chunk, pa.DictionaryArray)
                        and len(chunk.dictionary) == 1 else [None, ""])}  # fmt: skip
    one = values.pop() if len(values) == 1 else None
    return one if isinstance(one, str) else None


def _strings(col: pa.ChunkedArray) -> pl.Series:
    """A string column read as dictionaries as a polars String column: each chunk's codes
    gathered from its dictionary (a third of the cost of polars' cast of a categorical)."""
    parts = []
    for chunk in col.chunks:
        if isinstance(chunk, pa.DictionaryArray):
            values = pl.Series(chunk.dictionary.cast(pa.large_string()), dtype=pl.String)
            parts.append(values.gather(pl.from_arrow(chunk.indices)))  # type: ignore[arg-type]
        else:
            parts.append(pl.Series(chunk.cast(pa.large_string()), dtype=pl.String))
    if not parts:
        return pl.Series([], dtype=pl.String)
    return pl.concat(parts, rechunk=False) if len(parts) > 1 else parts[0]


_FROM_EXTRA = ("variant", "arm", "forced", "shadows", "mirror_skipped")
# (read as dictionaries: few distinct values; the segment map's keys and values)
DICTIONARY_COLUMNS = ("experiment", "segment")
# (read by polars: flat strings; polars decodes them in about half the time of Arrow's reader
# and its dictionaries; see read_file)
VIEW_COLUMNS = ("request_id", "unit", "served")


@dataclass
class Segments:
    """A page's distinct segment texts (first seen first) and each row's number into them (-1:
    no segment), as :func:`segment_codes` found them."""

    texts: list[str]
    codes: np.ndarray


def _known(segs: Segments | None) -> tuple[list[str], np.ndarray] | None:
    return (segs.texts, segs.codes) if segs is not None else None


def record_frame(table: pa.Table, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """Archive columns (:func:`columns_for` the schema) as the analyzer's record columns:
    those of ``schema`` (:func:`router.analysis.frames.record_schema`: numeric or text
    predictions, the text kind's timing, captured fields), as a page of lines would hold.
    Columns null in every row (v2 columns of older files, the repeat side, ``extra``) are not
    converted: their record columns are nulls of the record type, as converting them gives.
    String columns may be dictionaries (:data:`DICTIONARY_COLUMNS`): the same columns."""
    return _record_frame(table, schema)[0]


def _record_frame(table: pa.Table, schema: dict[str, pl.DataType],
                  ) -> tuple[pl.DataFrame, Segments | None]:  # fmt: skip
    """:func:`record_frame`, and the segments numbered (when they could be)."""
    n = table.num_rows
    null = {name for name in table.column_names if table.column(name).null_count == n}
    null.discard("request_id")  # (one column converted, for the height of an empty page)
    keep = [c for c in table.column_names if c not in null and c not in ("stream_id", "raw")]
    segs = None
    if "segment" in keep:
        numbered = segment_codes(table.column("segment"))
        segs = Segments(numbered[1], numbered[0]) if numbered is not None else None
    strings = [c for c in keep if c != "segment"
               and pa.types.is_dictionary(table.schema.field(c).type)]  # fmt: skip
    plain = [c for c in keep if c not in strings and (c != "segment" or segs is None)]
    df = pl.from_arrow(table.select(plain))
    assert isinstance(df, pl.DataFrame)
    added: list[pl.Series | pl.Expr] = []
    for c in strings:  # (a column of one value, the experiment's name: a scalar column)
        one = _constant(table.column(c))
        added.append(_strings(table.column(c)).alias(c) if one is None
                     else pl.lit(one, pl.String).alias(c))  # fmt: skip
    seg: pl.Expr | None = None
    if segs is not None:
        index = np.where(segs.codes >= 0, segs.codes, len(segs.texts)).astype(np.uint32)
        texts = pl.Series([*segs.texts, None], dtype=pl.String)
        added.append(texts.gather(index).alias("segment"))
        seg = pl.col("segment")
    elif "segment" in keep:
        seg, _texts = _segment_text(df)
    if added:
        df = df.with_columns(added)
    cols: list[pl.Expr] = []
    # A/B/n additions (issue 16) live in the archive's ``extra`` object of unknown keys
    extra = pl.col("extra") if "extra" in keep else None
    for name, dtype in schema.items():
        source = "extra" if name in _FROM_EXTRA else name
        if name == "segment" and seg is not None:
            cols.append(seg)
        elif source not in keep:  # (null throughout, or not in the table)
            cols.append(pl.lit(None, dtype).alias(name))
        elif name in _FROM_EXTRA and extra is not None:
            got = extra.str.json_path_match(f"$.{name}")
            cols.append((got == "true" if dtype == pl.Boolean else got).alias(name))
        elif isinstance(dtype, pl.Struct):  # (a side; v2 fields of files written before
            # are nulls, filled by read_file)
            col = table.column(name)
            cols.append(_side(name, dtype, _any(col, "prediction_text"), col.null_count > 0))
        elif name in ("contract", "contract_repeat"):
            cols.append(_contract(name))
        else:
            cols.append(pl.col(name).cast(dtype))
    return df.select(cols), segs


def _any(col: pa.ChunkedArray, name: str) -> bool:
    """Whether field ``name`` of a struct column holds a value in some row (rows whose struct
    is null counted too: a needless yes only costs the reading of the field)."""
    k = col.type.get_field_index(name)
    return k >= 0 and any(chunk.field(k).null_count < len(chunk) for chunk in col.chunks)


def columns_for(schema: dict[str, pl.DataType]) -> list[str]:
    """The archive columns read for a record schema."""
    return list(RECORD_COLUMNS) + (["fields"] if "fields" in schema else [])


def leaves_for(schema: dict[str, pl.DataType]) -> dict[str, list[str]]:
    """The fields of each side column read for a record schema (those :func:`_side_field`
    reads: a side's other fields are never decoded)."""
    out: dict[str, list[str]] = {}
    for name, dtype in schema.items():
        if isinstance(dtype, pl.Struct) and name in RECORD_COLUMNS:
            fields = [f.name for f in dtype.fields]
            out[name] = fields + (["prediction_text"] if "prediction" in fields else [])
    return out


def _contract(name: str) -> pl.Expr:
    """The contract struct as the JSON text a record's contract has."""
    c = pl.col(name)
    return pl.when(c.is_not_null()).then(c.struct.json_encode()).alias(name)


PAGE_BYTES = 4 << 20  # small files are read together into a page of about this much Parquet
PAGE_FILES = 64  # files in one page at most


def file_groups(files: list[ArchiveFile]) -> list[list[ArchiveFile]]:
    """Consecutive files (in their order) folded as one page: a page of a few thousand rows
    costs about as much as one of tens of thousands (the polars plans, the Parquet footer, the
    per-page numpy calls), and the archiver writes a file a minute; a file of at least
    :data:`PAGE_BYTES` stays alone, so a page is never much larger than the largest file."""
    groups: list[list[ArchiveFile]] = []
    size = 0
    for f in files:
        if groups and size + f.size <= PAGE_BYTES and len(groups[-1]) < PAGE_FILES:
            groups[-1].append(f)
            size += f.size
        else:
            groups.append([f])
            size = f.size
    return groups


def file_page(store: ArchiveStore, f: ArchiveFile | list[ArchiveFile],
              schema: dict[str, pl.DataType], since: float | None, until: float | None,
              now: float, before_ms: int | None = None) -> Page:  # fmt: skip
    """The page of one archive file (or of a :func:`file_groups` group of consecutive files,
    folded as the files one after the other would be) with the columns of the record
    ``schema``; unreadable files are named in ``skipped``."""
    group = f if isinstance(f, list) else [f]
    tables: list[tuple[_Ids, pa.Table]] = []
    skipped: list[tuple[str, str]] = []
    for one in group:
        try:
            tables.append((_Ids(store, one, since, until, before_ms),
                           read_file(store, one, "pairs", columns_for(schema), since, until,
                                     before_ms=before_ms, leaves=leaves_for(schema),
                                     dictionary=DICTIONARY_COLUMNS,
                                     views=VIEW_COLUMNS)))  # fmt: skip
        except UnreadableFile as exc:
            skipped.append((exc.path, exc.reason))
    if not tables:
        return Page(pl.DataFrame(), [], skipped=skipped)
    if len(tables) > 1 and all(t.column("raw").null_count == t.num_rows for _f, t in tables) \
            and all(t.schema.equals(tables[0][1].schema) for _f, t in tables):  # fmt: skip
        table = pa.concat_tables([t for _f, t in tables])
        df, segs = _record_frame(table, schema)
        page = prepare_frame(df, _Names(tables), "", now, _known(segs))
    else:  # (entries kept whole, or files read plain and as dictionaries: each file's page
        # in turn, its lines after its rows)
        page = _table_page(*tables[0], schema, now)
        for ids, t in tables[1:]:
            page = _concat(page, _table_page(ids, t, schema, now))
    page.skipped = skipped
    page.source_bytes = sum(one.size for one in group)
    return page


def _table_page(ids: _Ids, table: pa.Table, schema: dict[str, pl.DataType],
                now: float) -> Page:  # fmt: skip
    raw = table.column("raw")
    bad_page: Page | None = None
    if raw.null_count < table.num_rows:  # entries kept whole: judged as lines
        table = plain_strings(table)  # (to filter)
        is_raw = raw.is_valid()
        whole = table.filter(is_raw)
        table = table.filter(raw.is_null())
        lines = [line.replace("\n", " ").encode() for line in whole.column("raw").to_pylist()]
        got = ids.of(is_raw)
        names = got.to_pylist() if got is not None else ["?"] * len(lines)
        chunk = Chunk(b"\n".join(lines), names=names, label=ids.f.path)
        bad_page = prepare_records(chunk, schema, now)
        ids = ids.only(raw.is_null())
    df, segs = _record_frame(table, schema)
    page = prepare_frame(df, _Names([(ids, table)]), "", now, _known(segs))
    if bad_page is not None:
        if bad_page.cols.height:  # (a raw line that turned out valid: fold it too)
            page = _concat(page, bad_page)
        else:
            page.rejected.merge(bad_page.rejected)
    return page


class _Ids:
    """The stream ids of the rows :func:`read_file` returns for a file, read (the same rows)
    only when asked for: they name invalid rows, which are rare, and are a tenth of the
    decoding of a file otherwise (a file deleted meanwhile: its rows are named ``?``)."""

    def __init__(self, store: ArchiveStore, f: ArchiveFile, since: float | None,
                 until: float | None, before_ms: int | None,
                 mask: pa.ChunkedArray | None = None) -> None:  # fmt: skip
        self.store, self.f, self.window, self.mask = store, f, (since, until, before_ms), mask
        self._ids: pa.ChunkedArray | None = None
        self._read = False

    def only(self, mask: pa.ChunkedArray) -> _Ids:
        """The ids of the rows of ``mask`` (of this file's rows)."""
        out = _Ids(self.store, self.f, *self.window, mask=mask)
        if self._read:
            out._read, out._ids = True, self.of(mask)
        return out

    def of(self, mask: pa.ChunkedArray | None = None) -> pa.ChunkedArray | None:
        """The ids (of the rows of ``mask``); None when the file cannot be read again."""
        if not self._read:
            self._read = True
            since, until, before_ms = self.window
            try:
                ids = read_file(self.store, self.f, "pairs", ["stream_id"], since, until,
                                before_ms=before_ms).column("stream_id")  # fmt: skip
            except UnreadableFile:
                ids = None
            if ids is not None and self.mask is not None:
                ids = ids.filter(self.mask)
            self._ids = ids
        if self._ids is None:
            return None
        return self._ids.filter(mask) if mask is not None else self._ids


class _Names(Sequence[str]):
    """``"<file> <stream id>"`` of the rows of tables read one after the other, read only
    when a row is named."""

    def __init__(self, tables: list[tuple[_Ids, pa.Table]]) -> None:
        self._parts = [(ids, t.num_rows) for ids, t in tables]
        self._starts = np.cumsum([0] + [n for _ids, n in self._parts])

    def __len__(self) -> int:
        return int(self._starts[-1])

    def _one(self, i: int) -> str:
        k = int(np.searchsorted(self._starts, i, side="right")) - 1
        ids, n = self._parts[k]
        col = ids.of()
        j = i - int(self._starts[k])
        return f"{ids.f.path} {col[j].as_py() if col is not None and len(col) == n else '?'}"

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> list[str]: ...
    def __getitem__(self, i: int | slice) -> str | list[str]:
        if isinstance(i, slice):
            return [self._one(j) for j in range(*i.indices(len(self)))]
        return self._one(i if i >= 0 else len(self) + i)


def _concat(a: Page, b: Page) -> Page:
    """Two pages as one (the rare file with valid entries among those kept whole)."""
    rejected = Invalid()
    rejected.merge(a.rejected)
    rejected.merge(b.rejected)
    segs = list(dict.fromkeys(a.segments + b.segments))
    remap_b = {i + 1: segs.index(t) + 1 for i, t in enumerate(b.segments)}
    bcols = b.cols.with_columns(
        pl.col("segc").replace_strict(remap_b, default=0, return_dtype=pl.Int64)
    )
    cols = pl.concat([a.cols, bcols.select(a.cols.columns)], how="vertical_relaxed")
    return Page(cols.sort("h", maintain_order=True), segs, rejected,
                sorted(set(a.experiments) | set(b.experiments)))  # fmt: skip


def open_store(src: Any) -> ArchiveStore:
    """The source's archive (opened once; raises StoreError when unreachable)."""
    if src.coverage is None:
        store = ArchiveStore.open(src.archive)
        store.check(must_exist=True)
        src.coverage = Coverage(uri=store.describe())
        src.extra["archive_store"] = store
    store_: ArchiveStore = src.extra["archive_store"]
    return store_


def archive_files(
    src: Any, schema: dict[str, pl.DataType], upto: float | None, before_ms: int | None = None
) -> tuple[list[ArchiveFile], Callable[[Any, float], Page]]:
    """The record files of the source's window (records stored from ``since`` to ``until``
    plus the replay slack) and the function that reads one into a page of the record
    ``schema`` (:func:`router.analysis.frames.record_schema`); the window's hours
    without any file are noted in ``src.coverage``. ``upto``: the last stream time read
    (:func:`router.analysis.reader.id_until`)."""
    store = open_store(src)
    last = upto if before_ms is None else min(upto or float("inf"), before_ms / 1000)
    p = plan(store, "pairs", src.experiment, src.since, last)
    cov: Coverage = src.coverage
    cov.files, cov.bytes = len(p.files), sum(f.size for f in p.files)
    cov.latest_archived = latest_archived(store, src.experiment)
    cov.ends_early = before_ms is None and src.until is not None and (
        cov.latest_archived is None or cov.latest_archived < src.until
    )
    end = Hour.of_ts(src.until) if src.until is not None else None
    in_window = [h for h in p.empty_hours if end is None or h <= end]
    cov.empty_hours = in_window
    if src.until is not None and src.since is not None:
        cov.hours = (Hour.of_ts(src.until).start - Hour.of_ts(src.since).start) // 3600 + 1
    else:
        cov.hours = p.hours
    return p.files, partial(_file_page, store, schema, src.since, upto, before_ms)


def _file_page(store: ArchiveStore, schema: dict[str, pl.DataType], since: float | None,
               until: float | None, before_ms: int | None, f: ArchiveFile | list[ArchiveFile],
               now: float) -> Page:  # fmt: skip
    return file_page(store, f, schema, since, until, now, before_ms)


# ---------------------------------------------------------------------- archive, then Redis
def redis_cutoff_ms(client: Any, keys: list[str]) -> int | None:
    """Where Redis takes over from the archive: the latest of the streams' first stream ids
    (ms), so every entry before it (trimmed from some stream, or not) is read from the archive
    and every entry from it on from Redis; None when the streams are empty."""
    firsts = []
    for key in keys:
        head = client.xrange(key, min="-", max="+", count=1)
        if head:
            raw = head[0][0]
            firsts.append(int((raw.decode() if isinstance(raw, bytes) else raw).split("-")[0]))
    return max(firsts) if firsts else None


# ---------------------------------------------------------------------- outcomes


# ---------------------------------------------------------------------- outcomes
OUTCOME_BATCH_ROWS = 500_000  # outcome rows checked and indexed at once (fewer polars calls)


def load_archive_outcomes(
    oi: OutcomeIndex, store: ArchiveStore, experiment: str, since: float | None,
    coverage: Coverage, before_ms: int | None = None, *, unit_rows_only: bool = False,
) -> None:  # fmt: skip
    """Every outcome stored from ``since`` on (all of them without ``since``; with
    ``before_ms`` those stored before it) into ``oi``, in stream order. Files are read two at
    a time and their rows indexed in batches of about :data:`OUTCOME_BATCH_ROWS`.
    ``unit_rows_only``: the pre-exposure history before a window (CUPED), as
    :meth:`OutcomeIndex.add_raw` takes it (its files are not counted again in the coverage)."""
    from concurrent.futures import ThreadPoolExecutor

    last = None if before_ms is None else before_ms / 1000

    def read(f: ArchiveFile) -> pa.Table | UnreadableFile:
        try:
            return read_file(store, f, "outcomes", list(OUTCOME_COLUMNS), since, None,
                             before_ms=before_ms)  # fmt: skip
        except UnreadableFile as exc:
            return exc

    ids = _OutcomeIds(store, since, before_ms)
    files = plan(store, "outcomes", experiment, since, last).files
    batch: list[tuple[ArchiveFile, pa.Table, pa.Array | None]] = []
    rows = 0
    with ThreadPoolExecutor(2, thread_name_prefix="archive-outcomes") as pool:
        for f, table in zip(files, _read_ahead(pool, read, files), strict=True):
            if isinstance(table, UnreadableFile):
                coverage.skip(table)
                continue
            coverage.outcome_files += 0 if unit_rows_only else 1
            raw = table.column("raw")
            kept = None
            if raw.null_count < table.num_rows:  # entries kept whole: judged as lines
                _index(oi, batch, experiment, ids, unit_rows_only)
                batch, rows = [], 0
                is_raw = raw.is_valid()
                whole = table.filter(is_raw)
                kept = pc.invert(is_raw)
                table = table.filter(kept)
                lines = [x.replace("\n", " ").encode() for x in whole.column("raw").to_pylist()]
                chunk = Chunk(b"\n".join(lines), names=ids.names(f, len(raw), is_raw),
                              label=f.path)  # fmt: skip
                odf, obad = parse_outcomes(chunk.data)
                oi.add_frame(odf, [(chunk.where(i), r) for i, r in obad], experiment,
                             unit_rows_only=unit_rows_only)  # fmt: skip
            batch.append((f, table, kept))
            rows += table.num_rows
            if rows >= OUTCOME_BATCH_ROWS:
                _index(oi, batch, experiment, ids, unit_rows_only)
                batch, rows = [], 0
    _index(oi, batch, experiment, ids, unit_rows_only)
    del batch
    # (the load's tables are freed: give their pages back rather than keep them for the fold,
    # which allocates through polars and numpy, not arrow's pool)
    pa.default_memory_pool().release_unused()


class _OutcomeIds:
    """The stream ids of an outcome file's rows, read only to name some of them (a bad row, an
    entry kept whole): the file is read again with the same window, so its rows are the same
    and in the same order; should that fail (the file deleted meanwhile), rows are named by
    their place in the file."""

    def __init__(self, store: ArchiveStore, since: float | None, before_ms: int | None) -> None:
        self.store, self.since, self.before_ms = store, since, before_ms

    def names(self, f: ArchiveFile, n: int, rows: pa.Array | None = None) -> list[str]:
        """The stream ids of ``f``'s ``n`` rows read (of those where ``rows`` is true)."""
        try:
            col = read_file(self.store, f, "outcomes", ["stream_id"], self.since, None,
                            before_ms=self.before_ms).column("stream_id")  # fmt: skip
        except UnreadableFile:
            col = None
        if col is None or len(col) != n:
            col = pa.chunked_array([pa.array([f"row {i + 1}" for i in range(n)], pa.string())])
        if rows is not None:
            col = col.filter(rows)
        return [str(x) for x in col.to_pylist()]


OUTCOME_READ_AHEAD = 4  # outcome files read ahead of the indexing (bounds the tables held)


def _read_ahead(pool: Any, read: Callable[[ArchiveFile], Any],
                files: list[ArchiveFile]) -> Iterator[Any]:  # fmt: skip
    """``pool.map(read, files)`` holding at most :data:`OUTCOME_READ_AHEAD` results (``map``
    submits every file at once, so a fast reader would hold the window's outcomes in memory)."""
    pending: deque[Any] = deque()
    it = iter(files)
    for f in it:
        pending.append(pool.submit(read, f))
        if len(pending) >= OUTCOME_READ_AHEAD:
            break
    while pending:
        result = pending.popleft().result()
        nxt = next(it, None)
        if nxt is not None:
            pending.append(pool.submit(read, nxt))
        yield result


def _index(oi: OutcomeIndex, batch: list[tuple[ArchiveFile, pa.Table, pa.Array | None]],
           experiment: str, ids: _OutcomeIds, unit_rows_only: bool = False) -> None:  # fmt: skip
    """Check and index the outcome rows of several files at once (bad rows named by file;
    ``batch``: each file's table, and which of its rows the table holds when not all)."""
    if not batch:
        return
    table = pa.concat_tables([t.select(list(OUTCOME_SCHEMA)) for _f, t, _k in batch])
    df = pl.from_arrow(table)
    assert isinstance(df, pl.DataFrame)
    valid, bad = check_outcome_frame(df.cast(OUTCOME_SCHEMA))  # type: ignore[arg-type]
    where: list[tuple[str, str]] = []
    if bad:
        starts = np.cumsum([0] + [t.num_rows for _f, t, _k in batch])
        names: dict[int, list[str]] = {}
        for i, reason in bad:
            k = int(np.searchsorted(starts, i, side="right")) - 1
            f, _t, kept = batch[k]
            if k not in names:
                names[k] = ids.names(f, len(kept) if kept is not None else _t.num_rows, kept)
            where.append((f"{f.path} {names[k][i - int(starts[k])]}", reason))
    oi.add_frame(valid, where, experiment, unit_rows_only=unit_rows_only)


def latest_archived(store: ArchiveStore, experiment: str) -> float | None:
    """When the newest record of the archive was stored (unix s; from its file's name)."""
    newest = None
    for _hour, rel in hours_of(store, "pairs", experiment):
        newest = rel
    if newest is None:
        return None
    names = [PartName.parse(e.name) for e in store.list_dir(newest) if not e.is_dir]
    lasts = [n.last for n in names if n is not None]
    return max(lasts)[0] / 1000.0 if lasts else None


def earliest_archived(src: Any) -> float | None:
    """When the oldest record of the archive was stored (unix s; from its file's name)."""
    store = open_store(src)
    for hour, rel in hours_of(store, "pairs", src.experiment):
        del hour
        names = [PartName.parse(e.name) for e in store.list_dir(rel) if not e.is_dir]
        firsts = [n.first for n in names if n is not None]
        if firsts:
            return min(firsts)[0] / 1000.0
    return None


def archive_section(src: Any, acc: Any) -> dict[str, Any] | None:
    """The report's ``archive`` key: the window's coverage (None for other sources)."""
    if not src.archive or src.coverage is None:
        return None
    cov: Coverage = src.coverage
    out = cov.as_dict()
    unreadable = out["unreadable_files"]
    unreadable["count"] += acc.unreadable_files
    if not acc.unreadable_files:
        return out
    unreadable["examples"] = (unreadable["examples"] + [
        {"path": p, "reason": r} for p, r in acc.unreadable_examples
    ])[:MAX_NAMED_FILES]  # fmt: skip
    return out
