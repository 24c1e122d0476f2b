"""The archiver against a real redis-server: exactly once, takeover, sharing, retention, lag."""

from __future__ import annotations

import time
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
import redis

from router.archive.archiver import Archiver
from router.archive.layout import KINDS
from router.archive.store import ArchiveStore, StoreError
from router.config import ArchiveConfig
from router.metrics import Metrics
from tests.archive.conftest import BAD_ENTRIES, HOUR_MS, T0_MS, fill


def _archiver(url: str, root: Path, **cfg: object) -> Archiver:
    client = redis.Redis.from_url(url)
    return Archiver(client, ArchiveStore.open(str(root)), "e", ArchiveConfig(**cfg),
                    metrics=Metrics())  # fmt: skip


def _ids(root: Path, kind: str = "pairs") -> list[str]:
    glob = f"{root}/{kind}/**/*.parquet"
    return [r[0] for r in duckdb.sql(f"SELECT stream_id FROM read_parquet('{glob}')").fetchall()]


def _counter(a: Archiver, name: str, *labels: str) -> float:
    return a.metrics.counter_value(name, tuple(labels))


def test_every_entry_exactly_once_in_hour_partitions_readable_by_duckdb(
    redis_url: str, tmp_path: Path
) -> None:
    client = redis.Redis.from_url(redis_url)
    filled = fill(client, n=3000, step_ms=3000, extra=BAD_ENTRIES)  # 2.5 hours of records
    a = _archiver(redis_url, tmp_path, max_buffer_records=1000)
    totals = a.run(until_idle=True)
    assert totals.records == {"pairs": filled.pairs, "outcomes": filled.outcomes}
    ids = _ids(tmp_path)
    assert sorted(ids) == sorted(filled.pair_ids) and len(set(ids)) == len(ids)
    assert len(_ids(tmp_path, "outcomes")) == filled.outcomes
    glob = f"{tmp_path}/pairs/**/*.parquet"
    per_hour = duckdb.sql(
        f"SELECT experiment, date, hour, count(*) FROM read_parquet('{glob}', "
        "hive_partitioning = true) GROUP BY ALL ORDER BY ALL"
    ).fetchall()
    assert [(e, str(d), h) for e, d, h, _n in per_hour] == [
        ("e", "2026-11-29", 10), ("e", "2026-11-29", 11), ("e", "2026-11-29", 12)
    ]  # fmt: skip
    assert sum(n for *_k, n in per_hour) == filled.pairs
    # the README's query: nested sides as structs, the segment as a map
    rows = duckdb.sql(
        f"SELECT segment['country'] AS country, served, count(*) AS n, "
        f"avg(champion.latency_ms) AS lat FROM read_parquet('{glob}') "
        "WHERE raw IS NULL GROUP BY ALL ORDER BY ALL"
    ).fetchall()
    assert sum(r[2] for r in rows) == filled.pairs - len(BAD_ENTRIES) and rows[0][3] > 0
    assert duckdb.sql(f"SELECT count(*) FROM read_parquet('{glob}') WHERE raw IS NOT NULL"
                      ).fetchall() == [(len(BAD_ENTRIES),)]  # fmt: skip
    assert _counter(a, "router_archive_records", "pairs") == filled.pairs
    assert _counter(a, "router_archive_raw", "pairs") == len(BAD_ENTRIES)
    assert _counter(a, "router_archive_files", "pairs") == totals.files - len(
        list((tmp_path / "outcomes").rglob("*.parquet"))
    )
    f = next((tmp_path / "pairs").rglob("*.parquet"))
    assert pq.ParquetFile(f).metadata.row_group(0).column(0).compression == "ZSTD"
    assert client.xpending("e:pairs", "archiver")["pending"] == 0
    # a second run finds nothing new
    again = _archiver(redis_url, tmp_path).run(until_idle=True)
    assert again.records == dict.fromkeys(KINDS, 0) and len(_ids(tmp_path)) == filled.pairs


def test_unparsed_and_parsed_replies_archive_the_same_rows(redis_url: str, tmp_path: Path) -> None:
    """XREADGROUP replies are read as hiredis parses them (lists); a cluster client's come
    parsed by redis-py (tuples and dicts): both give the same rows, an entry without the record
    field (kept whole in ``raw``) included."""
    client = redis.Redis.from_url(redis_url)
    filled = fill(client, n=400, step_ms=5000, extra=BAD_ENTRIES)
    client.xadd("e:pairs", {"x": "1", "y": "2"})  # (not a capture entry)
    rows = {}
    for mode in ("unparsed", "parsed"):
        a = _archiver(redis_url, tmp_path / mode, group=f"g-{mode}", read_count=150)
        assert a._raw is not None
        if mode == "parsed":
            a._raw = None  # (as with a cluster client)
        a.run(until_idle=True)
        glob = f"{tmp_path / mode}/pairs/**/*.parquet"
        sql = f"SELECT * FROM read_parquet('{glob}', hive_partitioning = false) ORDER BY 1"
        rows[mode] = duckdb.sql(sql).fetchall()
    assert rows["unparsed"] == rows["parsed"] and len(rows["parsed"]) == filled.pairs + 1
    assert [r[-1] for r in rows["parsed"] if r[-1] and "b'x'" in r[-1]] == [
        "{b'x': b'1', b'y': b'2'}"
    ]


def test_a_crash_between_write_and_ack_rewrites_nothing(redis_url: str, tmp_path: Path) -> None:
    client = redis.Redis.from_url(redis_url)
    filled = fill(client, n=1500, step_ms=5000)
    crashed = _archiver(redis_url, tmp_path, consumer="a-1", read_count=400)
    crashed.discover()
    for _ in range(3):  # read three pages, write their files, then "die" before XACK
        crashed.read_round()
    for st in crashed.streams.values():
        crashed.writer.write(st.kind, st.key, st.ids, st.payloads)
    assert len(_ids(tmp_path)) == 1200
    assert client.xpending("e:pairs", "archiver")["pending"] == 1200
    # restarted under the same name: its own pending entries come back, and are skipped
    b = _archiver(redis_url, tmp_path, consumer="a-1", read_count=300)
    totals = b.run(until_idle=True)
    assert totals.duplicates == crashed.buffered  # every re-read entry, pairs and outcomes
    assert _counter(b, "router_archive_duplicates", "pairs") == 1200
    ids = _ids(tmp_path)
    assert sorted(ids) == sorted(filled.pair_ids)
    assert len(_ids(tmp_path, "outcomes")) == filled.outcomes


def test_another_archiver_takes_over_what_a_dead_one_held(redis_url: str, tmp_path: Path) -> None:
    client = redis.Redis.from_url(redis_url)
    filled = fill(client, n=800, step_ms=5000)
    cfg = {"flush_interval_s": 0.01, "claim_idle_s": 0.2, "max_buffer_records": 300}
    dead = _archiver(redis_url, tmp_path, consumer="dead", **cfg)
    dead.discover()
    dead.read_round()
    st = dead.streams["e:pairs"]
    half = len(st.ids) // 2  # it wrote part of what it read, then died
    dead.writer.write("pairs", "e:pairs", st.ids[:half], st.payloads[:half])
    time.sleep(0.3)
    heir = _archiver(redis_url, tmp_path, consumer="heir", **cfg)
    totals = heir.run(until_idle=True)
    assert totals.duplicates == half
    assert sorted(_ids(tmp_path)) == sorted(filled.pair_ids)
    info = {g["name"].decode(): g for g in client.xinfo_consumers("e:pairs", "archiver")}
    assert info["dead"]["pending"] == 0


def test_a_write_that_failed_is_written_again_and_nothing_is_lost(
    redis_url: str, tmp_path: Path
) -> None:
    """A buffer is written (and acknowledged) on the converter thread while the next is read;
    when the write fails, the batch goes back into its buffer, stays unacknowledged, and the
    next write archives it exactly once."""
    client = redis.Redis.from_url(redis_url)
    filled = fill(client, n=900, step_ms=5000)
    (tmp_path / "pairs").write_text("in the way")  # the pairs directory cannot be made
    a = _archiver(redis_url, tmp_path, read_count=200, max_buffer_records=300)
    a.discover()
    a.read_round()
    a.read_round()
    a.start_flush(a.streams["e:pairs"])  # (in the background)
    assert a.read_round() > 0  # reading goes on meanwhile
    with pytest.raises(StoreError):
        a.finish_write(wait=True)
    st = a.streams["e:pairs"]
    assert len(st.ids) == len(set(st.ids)) == a.buffered - len(a.streams["e:outcomes"].ids)
    assert st.ids[:300] == sorted(st.ids[:300]) and st.recheck
    assert client.xpending("e:pairs", "archiver")["pending"] == len(st.ids)
    assert a.totals.records["pairs"] == 0
    (tmp_path / "pairs").unlink()
    totals = a.run(until_idle=True)
    ids = _ids(tmp_path)
    assert sorted(ids) == sorted(filled.pair_ids) and len(set(ids)) == len(ids)
    assert totals.records["pairs"] == 900 and totals.duplicates == 0
    assert client.xpending("e:pairs", "archiver")["pending"] == 0


def test_archivers_share_a_sharded_experiment(redis_url: str, tmp_path: Path) -> None:
    client = redis.Redis.from_url(redis_url)
    filled = fill(client, n=2000, step_ms=2000, shards=3)
    a = _archiver(redis_url, tmp_path, consumer="a", read_count=100, max_buffer_records=250)
    b = _archiver(redis_url, tmp_path, consumer="b", read_count=100, max_buffer_records=250)
    while True:  # alternate rounds, as two processes would interleave
        got = a.step() + b.step()
        if not got:
            break
    a.flush_all()
    b.flush_all()
    assert sorted(a.streams) == ["e:outcomes", "e:pairs:0", "e:pairs:1", "e:pairs:2"]
    ids = _ids(tmp_path)
    assert sorted(ids) == sorted(filled.pair_ids) and len(set(ids)) == len(ids)
    assert a.totals.records["pairs"] > 0 and b.totals.records["pairs"] > 0
    names = {p.name.split("-")[1] for p in (tmp_path / "pairs").rglob("*.parquet")}
    assert names == {"0", "1", "2"}  # the shard is in the file name


def test_retention_deletes_old_hour_partitions(redis_url: str, tmp_path: Path) -> None:
    client = redis.Redis.from_url(redis_url)
    fill(client, n=400, step_ms=30_000, outcome_delay_ms=HOUR_MS)  # ~3.3 hours
    a = _archiver(redis_url, tmp_path, retention_days=1.0)
    a.clock = lambda: T0_MS / 1000 + 86400 + 2 * 3600 + 1  # a day and two hours later
    a.run(until_idle=True)  # (retention ran before anything was written)
    hours_before = sorted(p.name for p in (tmp_path / "pairs").rglob("hour=*"))
    assert hours_before == ["hour=10", "hour=11", "hour=12", "hour=13"]
    assert a.apply_retention() == 2 + 1  # pairs 10:00, 11:00; outcomes 11:00
    assert sorted(p.name for p in (tmp_path / "pairs").rglob("hour=*")) == ["hour=12", "hour=13"]
    assert a.metrics.counter_value("router_archive_partitions_deleted", ("pairs",)) == 2


def test_entries_trimmed_before_they_were_archived_are_counted(
    redis_url: str, tmp_path: Path
) -> None:
    client = redis.Redis.from_url(redis_url)
    fill(client, n=300, step_ms=1000)
    first = _archiver(redis_url, tmp_path, consumer="x")
    first.discover()
    first.read_round()  # read (pending), then the stream is trimmed under it
    client.xtrim("e:pairs", maxlen=0, approximate=False)
    again = _archiver(redis_url, tmp_path, consumer="x")
    again.run(until_idle=True)
    assert again.metrics.counter_value("router_archive_errors", ("trimmed",)) == 300
    assert client.xpending("e:pairs", "archiver")["pending"] == 0
    assert not list((tmp_path / "pairs").rglob("*.parquet"))


def test_lag_metrics_say_how_far_behind(redis_url: str, tmp_path: Path) -> None:
    client = redis.Redis.from_url(redis_url)
    fill(client, n=500, step_ms=1000)
    a = _archiver(redis_url, tmp_path, read_count=200)
    a.discover()
    a._read(a.streams["e:pairs"], None)  # 200 pending, 300 not yet delivered
    a.update_lag()
    gauges = {(n, tuple(lk)): v for n, lk, v in a.metrics.snapshot()["gauges"]}
    assert gauges[("router_archive_lag_entries", ("e:pairs",))] == 500
    age = gauges[("router_archive_lag_seconds", ("e:pairs",))]
    assert abs(age - (time.time() - T0_MS / 1000)) < 60
    a.run(until_idle=True)
    a.update_lag()
    gauges = {(n, tuple(lk)): v for n, lk, v in a.metrics.snapshot()["gauges"]}
    assert gauges[("router_archive_lag_entries", ("e:pairs",))] == 0
    assert gauges[("router_archive_lag_seconds", ("e:pairs",))] == 0
