"""The archive's parse path: columns read as dictionaries (low-cardinality strings, the segment
map's keys and values), the segment numbered from them, the page sort. Every way must give the
page that reading the same rows plain gives (the report over an archive equals the JSONL one)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from router.analysis.archive_read import (
    DICTIONARY_COLUMNS,
    _segment_text,
    columns_for,
    file_page,
    leaves_for,
    record_frame,
    segment_codes,
)
from router.analysis.frames import Page, _sorted_by_h, prepare_frame, record_schema
from router.archive.convert import entries_table
from router.archive.layout import Hour
from router.archive.scan import ArchiveFile, read_file
from router.archive.store import ArchiveStore
from router.demo.synth import SynthSpec, generate

MAP = pa.map_(pa.string(), pa.string())
DICT = pa.dictionary(pa.int32(), pa.string())
REL = "pairs/experiment=e/date=2026-11-30/hour=00"
T0 = 1_796_000_000_000


def _texts_of(col: pa.ChunkedArray) -> list[str | None]:
    """Each row's segment text, the general way (polars hashes the maps)."""
    df = pl.DataFrame({"segment": pl.Series(col.combine_chunks() if col.num_chunks else
                                            pa.array([], MAP))})  # fmt: skip
    expr, _texts = _segment_text(df)
    return df.select(expr).to_series().to_list()


def _numbered(col: pa.ChunkedArray) -> tuple[list[str | None], list[str]]:
    got = segment_codes(col)
    assert got is not None
    codes, texts = got
    assert codes.dtype == np.int32 and codes.size == len(col)
    return [texts[c] if c >= 0 else None for c in codes.tolist()], texts


def _first_seen(rows: list[str | None]) -> list[str]:
    return list(dict.fromkeys(t for t in rows if t is not None))


def _dict_map(col: pa.MapArray, mask: pa.Array | None = None) -> pa.MapArray:
    """The same maps with dictionary keys and values."""
    return pa.MapArray.from_arrays(col.offsets, col.keys.dictionary_encode(),
                                   col.items.dictionary_encode(), mask=mask)  # fmt: skip


MAPS: list[Any] = [
    [("country", "DE"), ("device", "web")],
    None,
    [],
    [("country", "FR"), ("device", "ios")],
    [("country", "DE"), ("device", "web")],
    [("device", "web"), ("country", "DE")],  # (another key order: another text)
    [("country", None)],  # (a null value: not an object of strings, judged later)
    [("a", "1"), ("a", "2")],  # (a repeated key: the last value, the first place)
    [("country", "DE")],
    [],
    None,
]


def test_segments_numbered_from_codes_equal_the_general_texts() -> None:
    plain = pa.array(MAPS, MAP)
    want = _texts_of(pa.chunked_array([plain]))
    got, texts = _numbered(pa.chunked_array([plain]))  # (plain keys and values: encoded)
    assert got == want and texts == _first_seen(want)
    assert '{"country":null}' in texts and '{"a":"2"}' in texts and "{}" in texts
    as_dict = _dict_map(plain, mask=plain.is_null())
    assert _numbered(pa.chunked_array([as_dict]))[0] == want
    # slices (offsets into the whole children), chunks with their own dictionaries
    rest = pa.array(MAPS[4:], MAP)
    own = pa.chunked_array([as_dict.slice(0, 4), _dict_map(rest, mask=rest.is_null())])
    assert _numbered(own)[0] == want
    chunked = pa.chunked_array([as_dict.slice(0, 4), as_dict.slice(4)])
    assert _numbered(chunked)[0] == want
    assert _numbered(pa.chunked_array([plain.slice(2, 5), plain.slice(7)]))[0] == want[2:]
    # all null, all empty, nothing at all
    assert _numbered(pa.chunked_array([pa.array([None, None], MAP)]))[0] == [None, None]
    assert _numbered(pa.chunked_array([pa.array([[], []], MAP)]))[0] == ["{}", "{}"]
    assert _numbered(pa.chunked_array([], MAP)) == ([], [])


def test_maps_of_variable_length_and_many_values() -> None:
    rng = np.random.default_rng(3)
    maps: list[Any] = []
    for _ in range(5000):
        n = int(rng.integers(0, 4))
        maps.append([(f"k{rng.integers(0, 5)}", f"v{rng.integers(0, 300)}") for _ in range(n)]
                    if rng.random() > 0.05 else None)  # fmt: skip
    col = pa.chunked_array([pa.array(maps[:2500], MAP), pa.array(maps[2500:], MAP)])
    want = _texts_of(col)
    got, texts = _numbered(col)
    assert got == want and texts == _first_seen(want)


def test_maps_too_long_to_number_fall_back_to_the_general_way() -> None:
    wide = [[(f"k{i}", f"v{i}{j}") for i in range(40)] for j in range(3)] + [None]
    col = pa.chunked_array([pa.array(wide, MAP)])
    assert segment_codes(col) is None
    table = pa.table({"request_id": ["a", "b", "c", "d"], "segment": col.combine_chunks()})
    schema = {"request_id": pl.String(), "segment": pl.String()}
    got = record_frame(table, schema)["segment"].to_list()  # type: ignore[arg-type]
    assert got == _texts_of(col) and got[0] == orjson.dumps(dict(wide[0])).decode()


def test_the_page_sort_is_stable() -> None:
    rng = np.random.default_rng(5)
    h = rng.integers(-(2**63), 2**63 - 1, 20_000, dtype=np.int64)
    h[::7] = h[3]  # (duplicates: the first stays first)
    h[1::11] = np.int64(-(2**63))
    df = pl.DataFrame({"h": h, "i": np.arange(h.size)})
    assert _sorted_by_h(df).equals(df.sort("h", maintain_order=True))
    with_null = pl.DataFrame({"h": [3, None, 1, 3], "i": [0, 1, 2, 3]})
    assert _sorted_by_h(with_null).equals(with_null.sort("h", maintain_order=True))
    assert _sorted_by_h(df.head(1)).equals(df.head(1))


# ---------------------------------------------------------------------- whole files
def _table(n: int, seed: int = 1) -> pa.Table:
    spec = SynthSpec(experiment="e", n=n, seed=seed, units=40, start=T0 / 1000, rate=50)
    payloads = []
    for i, (rec, _rows) in enumerate(generate(spec)):
        if i % 17 == 0:
            rec.pop("segment", None)
        elif i % 19 == 0:
            rec["segment"] = {}
        elif i % 23 == 0:
            rec["segment"] = {"tier": f"t{i % 5}", "country": "DE", "device": "web"}
        if i % 29 == 0:
            rec.pop("unit", None)
        if seed == 1 and i >= 2500:  # (another experiment in the last rows: not one value)
            rec["experiment"] = "other"
        payloads.append(orjson.dumps(rec))
    ids = [f"{T0 + i}-0" for i in range(len(payloads))]
    return entries_table("pairs", "e:pairs", ids, payloads)


def _own_segments(table: pa.Table) -> pa.Table:
    seg = pa.array([[("id", f"s{i}"), ("device", "web")] if i % 13 else None
                    for i in range(table.num_rows)], MAP)  # fmt: skip
    return table.set_column(table.schema.get_field_index("segment"), "segment", seg)


def _write(root: Path, name: str, table: pa.Table, **opts: Any) -> ArchiveFile:
    (root / REL).mkdir(parents=True, exist_ok=True)
    pq.write_table(table, root / REL / name, **opts)
    return ArchiveFile(f"{REL}/{name}", Hour(T0 // 1000 // 3600 * 3600), 1)


def _plain_page(store: ArchiveStore, files: list[ArchiveFile],
                schema: dict[str, pl.DataType]) -> Page:  # fmt: skip
    """The page of the files read without dictionaries, the general segment way."""
    tables = [read_file(store, f, "pairs", columns_for(schema), leaves=leaves_for(schema))
              for f in files]  # fmt: skip
    table = pa.concat_tables(tables)
    assert not any(pa.types.is_dictionary(t) for t in table.schema.types)
    return prepare_frame(record_frame(table, schema), [str(i) for i in range(len(table))], "",
                         2e9)  # fmt: skip


def _same(a: Page, b: Page) -> None:
    assert a.cols.schema == b.cols.schema
    assert a.cols.equals(b.cols, null_equal=True)
    assert a.segments == b.segments
    assert sorted(a.experiments) == sorted(b.experiments)
    assert a.rejected.rows() == b.rejected.rows()


@pytest.mark.parametrize("numeric", [True, False])
def test_files_with_dictionary_plain_and_mixed_row_groups_give_the_same_page(
    tmp_path: Path, numeric: bool
) -> None:
    schema = record_schema(numeric=numeric, fields=True)
    store = ArchiveStore.open(str(tmp_path))
    table = _table(3000)
    files = {
        "dict": _write(tmp_path, "part-x-1-0_1-0.parquet", table),
        "plain": _write(tmp_path, "part-x-2-0_2-0.parquet", table, use_dictionary=False),
        # row groups with their own dictionaries
        "groups": _write(tmp_path, "part-x-3-0_3-0.parquet", table, row_group_size=700),
        # dictionaries that overflow into plain pages within a column chunk (a segment of
        # its own a row)
        "fallback": _write(tmp_path, "part-x-4-0_4-0.parquet", _own_segments(table),
                           row_group_size=1100, dictionary_pagesize_limit=64,
                           data_page_size=256),
        # some columns dictionary-encoded, others not
        "mixed": _write(tmp_path, "part-x-5-0_5-0.parquet", table,
                        use_dictionary=["experiment", "segment.key_value.key"]),
    }  # fmt: skip
    for name, f in files.items():
        read = read_file(store, f, "pairs", columns_for(schema), leaves=leaves_for(schema),
                         dictionary=DICTIONARY_COLUMNS)  # fmt: skip
        assert read.num_rows == table.num_rows, name
        assert pa.types.is_dictionary(read.schema.field("experiment").type), name
        page = file_page(store, f, schema, None, None, 2e9)
        _same(page, _plain_page(store, [f], schema))
        assert sorted(page.experiments) == ["e", "other"] and len(page.segments) > 3
    # files folded together, whatever way each was read
    group = list(files.values())
    _same(file_page(store, group, schema, None, None, 2e9), _plain_page(store, group, schema))


def test_a_window_and_an_older_file_without_the_columns(tmp_path: Path) -> None:
    """Rows filtered by a window, and a file without the dictionary columns (nulls)."""
    schema = record_schema(numeric=True, fields=False)
    store = ArchiveStore.open(str(tmp_path))
    table = _table(1500, seed=2)
    f = _write(tmp_path, "part-x-1-0_1-0.parquet", table, row_group_size=400)
    since, until = (T0 + 300) / 1000, (T0 + 1200) / 1000
    page = file_page(store, f, schema, since, until, 2e9)
    plain = read_file(store, f, "pairs", columns_for(schema), since, until,
                      leaves=leaves_for(schema))  # fmt: skip
    want = prepare_frame(record_frame(plain, schema), [""] * plain.num_rows, "", 2e9)
    _same(page, want)
    assert page.cols.height == 901 and page.experiments == ["e"]
    old = _write(tmp_path, "part-x-2-0_2-0.parquet",
                 table.drop_columns(["segment", "unit", "served"]))  # fmt: skip
    got = read_file(store, old, "pairs", columns_for(schema), leaves=leaves_for(schema),
                    dictionary=DICTIONARY_COLUMNS)  # fmt: skip
    assert got.column("segment").null_count == got.num_rows  # (absent: plain nulls)
    assert got.column("unit").null_count == got.num_rows
    assert got.schema.field("experiment").type == DICT
    page = file_page(store, old, schema, None, None, 2e9)
    assert page.cols.height == 0 and page.rejected.total == table.num_rows  # (served: missing)
    assert page.rejected.rows()[0]["field"] == "served"


def test_columns_of_one_value_are_made_as_reading_them_gives(tmp_path: Path) -> None:
    """A column the statistics show holds one value in every row is not decoded: the same
    column (type and values) is made; one value a row group is not one value."""
    store = ArchiveStore.open(str(tmp_path))
    table = _table(900, seed=3)
    one_row = table.slice(0, 1)
    by_group = table.set_column(table.schema.get_field_index("experiment"), "experiment",
                                pa.array(["a"] * 450 + ["b"] * 450))  # fmt: skip
    cols = ["v", "experiment", "request_id", "mirrored", "served", "unit", "ts"]
    for k, (t, opts) in enumerate([(table, {}), (table, {"write_statistics": False}),
                                   (one_row, {}), (by_group, {"row_group_size": 450})]):
        f = _write(tmp_path, f"part-x-{k}-0_{k}-0.parquet", t, **opts)
        want = pq.ParquetFile(tmp_path / f.path).read(columns=cols)
        assert read_file(store, f, "pairs", cols).equals(want)
        got = read_file(store, f, "pairs", cols, dictionary=DICTIONARY_COLUMNS)
        assert got.schema.field("experiment").type == DICT
        assert got.column("experiment").cast(pa.string()).equals(want.column("experiment"))
        assert got.select(["v", "request_id", "mirrored", "ts"]).equals(
            want.select(["v", "request_id", "mirrored", "ts"]))


def test_strings_read_by_polars_and_entries_kept_whole(tmp_path: Path) -> None:
    """request_id, unit and served come back as string views (polars' reader), the same
    values; filtered (a window, entries kept whole) as plain strings: the same page."""
    from router.analysis.archive_read import VIEW_COLUMNS, _Ids, _table_page

    schema = record_schema(numeric=True, fields=False)
    store = ArchiveStore.open(str(tmp_path))
    table = _table(1200, seed=4)
    bad = entries_table("pairs", "e:pairs", [f"{T0 + 5000 + i}-0" for i in range(3)],
                        [b"not json", orjson.dumps({"v": 1, "request_id": "x"}), b"[1]"])
    f = _write(tmp_path, "part-x-1-0_1-0.parquet", pa.concat_tables([table, bad]),
               row_group_size=500)  # fmt: skip
    cols = columns_for(schema)
    plain = read_file(store, f, "pairs", cols, leaves=leaves_for(schema))
    got = read_file(store, f, "pairs", cols, leaves=leaves_for(schema),
                    dictionary=DICTIONARY_COLUMNS, views=VIEW_COLUMNS)  # fmt: skip
    for name in VIEW_COLUMNS:
        assert got.schema.field(name).type == pa.string_view()
        assert got.column(name).cast(pa.string()).equals(plain.column(name))
    windowed = read_file(store, f, "pairs", cols, T0 / 1000, (T0 + 600) / 1000,
                         leaves=leaves_for(schema), views=VIEW_COLUMNS)  # fmt: skip
    assert windowed.schema.field("request_id").type == pa.string()
    assert windowed.num_rows == 601
    page = file_page(store, f, schema, None, None, 2e9)
    want = _table_page(_Ids(store, f, None, None, None), plain, schema, 2e9)
    _same(page, want)
    assert page.rejected.total == 3 and page.cols.height == 1200
