"""The archive's Parquet schema: every record field a column, nothing dropped, evolution."""

from __future__ import annotations

from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from router.archive.convert import decodes_fast, entries_table
from router.archive.layout import Hour, PartName, shard_of
from router.archive.scan import ArchiveFile, UnreadableFile, read_file
from router.archive.schema import (
    META_KIND,
    OUTCOMES_SCHEMA,
    PAIRS_SCHEMA,
    SIDE_TYPE,
)
from router.archive.store import ArchiveStore

REC = {
    "v": 1, "experiment": "e", "request_id": "r1", "ts": 1796000000.5, "unit": "u1",
    "bucket": 42, "served": "champion", "mirrored": True,
    "segment": {"country": "DE", "device": "ios"},
    "champion": {"version": "c1", "status": 200, "latency_ms": 12.5, "prediction": 0.75,
                 "error": None},
    "challenger": {"version": "c2", "status": 503, "latency_ms": None, "prediction": None,
                   "error": "HTTP 503", "truncated": True, "response_bytes": 9999},
    "contract": {"missing": ["a"], "extra": [], "retyped": ["b.c"]},
    "fields": {"age": 20, "plan": "pro"},
}  # fmt: skip


def _rows(kind: str, docs: list[object]) -> list[dict[str, object]]:
    payloads = [d if isinstance(d, bytes) else orjson.dumps(d) for d in docs]
    ids = [f"1796000000{i:03d}-{i}" for i in range(len(payloads))]
    table = entries_table(kind, f"e:{kind}", ids, payloads)
    assert table.schema.metadata[META_KIND] == kind.encode()
    return table.to_pylist()


def test_a_record_maps_to_typed_columns() -> None:
    (row,) = _rows("pairs", [REC])
    assert row["stream_id"] == "1796000000000-0" and row["stream"] == "e:pairs"
    assert row["ts"] == 1796000000.5 and row["bucket"] == 42 and row["v"] == 1
    assert row["segment"] == [("country", "DE"), ("device", "ios")]  # a map, order kept
    assert row["champion"]["prediction"] == "0.75"  # JSON text
    assert row["champion"]["status"] == 200 and row["champion"]["extra"] is None
    assert row["challenger"]["truncated"] is True and row["challenger"]["response_bytes"] == 9999
    assert row["contract"] == {"missing": ["a"], "extra": [], "retyped": ["b.c"], "changed": None}
    assert row["champion_repeat"] is None and row["contract_repeat"] is None
    assert orjson.loads(row["fields"]) == {"age": 20, "plan": "pro"}
    assert row["extra"] is None and row["raw"] is None


def test_the_noise_floor_repeat_and_changed_values_are_columns() -> None:
    """Schema v2: the noise floor's second champion answer and its contract comparison, and
    the contract's ``changed`` paths, are typed columns (not the raw fallback)."""
    rec = {**REC, "contract": {"changed": ["score"]},
           "champion_repeat": {**REC["champion"], "prediction": 0.74},
           "contract_repeat": {"changed": ["score"], "missing": ["a"]}}  # fmt: skip
    for row in _rows("pairs", [rec]) + _rows("pairs", [rec, {**rec, "new_key": 1}]):
        assert row["raw"] is None
        assert row["contract"]["changed"] == ["score"]
        assert row["champion_repeat"]["prediction"] == "0.74"
        assert row["contract_repeat"] == {"missing": ["a"], "extra": None, "retyped": None,
                                          "changed": ["score"]}  # fmt: skip


@pytest.mark.parametrize(
    "prediction, text, as_text",
    [("cat", '"cat"', "cat"), ([0.1, 0.9], "[0.1,0.9]", None), ({"k": 1}, '{"k":1}', None),
     (True, "true", None), (3, "3", None)],
)  # fmt: skip
def test_predictions_of_any_json_type(prediction: object, text: str, as_text: str | None) -> None:
    rec = {**REC, "champion": {**REC["champion"], "prediction": prediction}}  # type: ignore[dict-item]
    (row,) = _rows("pairs", [rec])
    assert row["champion"]["prediction"] == text
    assert row["champion"]["prediction_text"] == as_text


def test_unknown_keys_are_kept_as_json_not_dropped() -> None:
    rec = {**REC, "router_version": "2.0",
           "champion": {**REC["champion"], "cache_hit": True, "gpu": "a100"}}  # type: ignore[dict-item]
    fast, slow = _rows("pairs", [REC, rec])  # one batch: the slow path for both
    assert fast["extra"] is None and fast["champion"]["extra"] is None
    assert orjson.loads(slow["extra"]) == {"router_version": "2.0"}
    assert orjson.loads(slow["champion"]["extra"]) == {"cache_hit": True, "gpu": "a100"}
    assert slow["champion"]["latency_ms"] == 12.5 and slow["segment"] == fast["segment"]
    assert fast["champion"] == {**slow["champion"], "extra": None}


STREAMED = {"version": "c1", "status": 200, "latency_ms": 812.5, "prediction": "Hi there.",
            "error": None, "ttfb_ms": 95.25, "duration_ms": 812.5, "bytes": 2048,
            "streamed": True, "events": 14, "finish_reason": "stop",
            "usage": {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21}}  # fmt: skip
BUFFERED = {"version": "c2", "status": 200, "latency_ms": 40.0, "prediction": "Hello.",
            "error": None, "ttfb_ms": 38.5, "bytes": 310, "parse_error": "no choices"}  # fmt: skip


def test_issue_15_keys_are_typed_columns_on_the_fast_path() -> None:
    """Schema v2: the per-side timing, size and text keys and ``client_aborted`` are columns
    (not ``extra``), and today's records take the msgspec fast path."""
    today = {**REC, "champion": STREAMED, "challenger": BUFFERED, "client_aborted": True,
             "champion_repeat": {**STREAMED, "ttfb_ms": 90.0}}  # fmt: skip
    payloads = [orjson.dumps(today), orjson.dumps(REC)]
    assert decodes_fast(payloads) is not None
    row, plain = _rows("pairs", [today, REC])
    c, h, r = row["champion"], row["challenger"], row["champion_repeat"]
    assert (c["ttfb_ms"], c["duration_ms"], c["bytes"], c["streamed"], c["events"]) == (
        95.25, 812.5, 2048, True, 14)  # fmt: skip
    assert orjson.loads(c["usage"]) == STREAMED["usage"] and c["finish_reason"] == "stop"
    assert c["prediction_text"] == "Hi there." and c["extra"] is None and c["parse_error"] is None
    assert (h["ttfb_ms"], h["bytes"], h["parse_error"]) == (38.5, 310, "no choices")
    assert h["duration_ms"] is None and h["streamed"] is None and h["usage"] is None
    assert r["ttfb_ms"] == 90.0 and row["client_aborted"] is True and row["extra"] is None
    assert plain["client_aborted"] is None and plain["champion"]["ttfb_ms"] is None
    # the slow path (an unknown key elsewhere in the batch) gives the same columns
    odd = {**REC, "router_version": "3"}
    slow, _odd = _rows("pairs", [today, odd])
    assert decodes_fast([orjson.dumps(today), orjson.dumps(odd)]) is None
    assert slow == row


@pytest.mark.parametrize(
    "side",
    [{"ttfb_ms": "fast"}, {"events": 1.5}, {"bytes": 2**63}, {"streamed": "yes"},
     {"finish_reason": 3}],
)  # fmt: skip
def test_an_issue_15_key_of_another_type_keeps_the_entry_whole(side: dict[str, object]) -> None:
    payload = orjson.dumps({**REC, "champion": {**STREAMED, **side}})
    (row,) = _rows("pairs", [payload])
    assert row["raw"] == payload.decode() and row["champion"] is None


@pytest.mark.parametrize(
    "payload",
    [b"not json", b"[1,2]", orjson.dumps({**REC, "ts": "yesterday"}),
     orjson.dumps({**REC, "segment": {"n": 3}}), orjson.dumps({**REC, "bucket": 1.5}),
     orjson.dumps({**REC, "v": 2**40}), orjson.dumps({**REC, "champion": "oops"})],
)  # fmt: skip
def test_an_entry_that_does_not_fit_is_kept_whole(payload: bytes) -> None:
    good, bad = _rows("pairs", [REC, payload])
    assert good["raw"] is None and good["request_id"] == "r1"
    assert bad["raw"] == payload.decode() and bad["request_id"] is None
    assert bad["stream_id"].endswith("-1")


def test_outcome_rows() -> None:
    rows = _rows("outcomes", [
        {"v": 1, "id": "o1", "experiment": "e", "request_id": "r1", "unit": None,
         "metric": "converted", "value": 1, "ts": 1796000001.0},
        {"experiment": "e", "unit": 7, "metric": "revenue", "value": 9.5, "source": "app"},
        {"experiment": "e", "request_id": "r2", "metric": "m", "value": "high"},
    ])  # fmt: skip
    assert rows[0]["value"] == 1.0 and rows[0]["id"] == "o1" and rows[0]["raw"] is None
    assert rows[1]["unit"] == "7" and orjson.loads(rows[1]["extra"]) == {"source": "app"}
    assert rows[2]["raw"] is not None and rows[2]["metric"] is None


def test_layout_names_round_trip() -> None:
    p = PartName("3", (1796000000000, 0), (1796000999999, 12))
    assert PartName.parse(p.name) == p
    assert PartName.parse(".part-3-1-0_2-0.parquet.host.1") is None
    assert p.overlaps((1796000999999, 12), (1796001000000, 0))
    assert not p.overlaps((1796000999999, 13), (1796001000000, 0))
    assert shard_of("e:pairs") == "x" and shard_of("e:pairs:3") == "3"
    assert shard_of("{e:3}:pairs") == "3" and shard_of("{e}:pairs") == "x"
    h = Hour.of_ms(1796000000000)
    assert Hour.parse(h.path) == h and h.path == "date=2026-11-30/hour=00"
    assert Hour.parse("date=2026-13-01/hour=00") is None


def test_an_older_file_without_newer_columns_reads_with_nulls(tmp_path: Path) -> None:
    """Schema evolution: columns (and side fields) a file lacks come back as nulls."""
    table = entries_table("pairs", "e:pairs", ["1796000000000-0"], [orjson.dumps(REC)])
    old_side = pa.struct([f for f in SIDE_TYPE if f.name not in ("prediction_text", "extra")])
    champ = table.column("champion").combine_chunks()
    old_champ = pa.StructArray.from_arrays(
        [champ.field(f.name) for f in old_side], fields=list(old_side)
    )
    old = table.drop_columns(["fields", "extra", "champion"]).append_column("champion", old_champ)
    rel = "pairs/experiment=e/date=2026-11-30/hour=00"
    (tmp_path / rel).mkdir(parents=True)
    pq.write_table(old, tmp_path / rel / "part-x-1796000000000-0_1796000000000-0.parquet")
    store = ArchiveStore.open(str(tmp_path))
    f = ArchiveFile(f"{rel}/part-x-1796000000000-0_1796000000000-0.parquet", Hour(0), 1)
    got = read_file(store, f, "pairs", ["request_id", "fields", "extra", "champion"]).to_pylist()
    assert got[0]["fields"] is None and got[0]["extra"] is None
    assert got[0]["champion"]["prediction"] == "0.75"
    assert got[0]["champion"]["prediction_text"] is None
    # a column of another type is a foreign schema: the file is skipped, named
    bad = old.drop_columns(["ts"]).append_column("ts", pa.array(["x"]))
    pq.write_table(bad, tmp_path / rel / "part-x-1-0_1-0.parquet")
    with pytest.raises(UnreadableFile, match="column ts is string, expected double"):
        read_file(store, ArchiveFile(f"{rel}/part-x-1-0_1-0.parquet", Hour(0), 1), "pairs",
                  ["ts"])  # fmt: skip


def test_schemas_have_the_documented_columns() -> None:
    assert PAIRS_SCHEMA.names == [
        "stream_id", "stream", "stored_at", "v", "experiment", "request_id", "ts", "unit",
        "bucket", "served", "mirrored", "segment", "champion", "challenger", "contract",
        "champion_repeat", "contract_repeat", "client_aborted", "fields", "extra", "raw",
    ]  # fmt: skip
    assert [f.name for f in SIDE_TYPE] == [
        "version", "status", "latency_ms", "prediction", "prediction_text", "error", "truncated",
        "response_bytes", "extra", "ttfb_ms", "duration_ms", "bytes", "streamed", "events",
        "usage", "finish_reason", "parse_error",
    ]  # fmt: skip
    assert OUTCOMES_SCHEMA.names[-2:] == ["extra", "raw"]
