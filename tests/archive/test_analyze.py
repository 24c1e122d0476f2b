"""`router analyze --archive`: the same report as from Redis or JSONL, windows, outcomes joined
across partitions, coverage (hours without data, unreadable files skipped and named)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis

from router.analysis.policy import load_policy
from router.analysis.reader import Source
from router.analysis.run import analyze
from router.archive.archiver import Archiver
from router.archive.store import ArchiveStore
from router.capture.reader import read_window
from router.config import ArchiveConfig
from tests.archive.conftest import BAD_ENTRIES, HOUR_MS, T0_MS, fill
from tests.helpers import ROOT

SCHEMA = json.loads(resources.files("router").joinpath("schemas/report.schema.json").read_text())
# what legitimately differs between sources: when, where an invalid entry was, the source
VOLATILE = {("meta", "generated_at"), ("window", "earliest_available"), ("archive",)}


def _strip(doc: Any, path: tuple[str, ...] = ()) -> Any:
    if isinstance(doc, dict):
        return {k: _strip(v, (*path, k)) for k, v in doc.items()
                if (*path, k) not in VOLATILE and k != "examples"}  # fmt: skip
    if isinstance(doc, list):
        return [_strip(v, path) for v in doc]
    return doc


def assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    sa, sb = _strip(a), _strip(b)
    if sa == sb:
        return
    diffs: list[str] = []

    def walk(x: Any, y: Any, where: str) -> None:
        if isinstance(x, dict) and isinstance(y, dict):
            for k in set(x) | set(y):
                walk(x.get(k), y.get(k), f"{where}/{k}")
        elif isinstance(x, list) and isinstance(y, list) and len(x) == len(y):
            for i, (u, v) in enumerate(zip(x, y, strict=True)):
                walk(u, v, f"{where}[{i}]")
        elif isinstance(x, float) and isinstance(y, float):
            if abs(x - y) > 1e-9 * max(1.0, abs(x)):
                diffs.append(f"{where}: {x} != {y}")
        elif x != y:
            diffs.append(f"{where}: {x!r} != {y!r}")

    walk(sa, sb, "")
    assert not diffs, "\n".join(diffs[:20])


@pytest.fixture
def archived(redis_url: str, tmp_path: Path) -> tuple[str, Path, int]:
    """2.5 hours of records (with invalid entries) and their outcomes a day later, archived."""
    client = redis.Redis.from_url(redis_url)
    filled = fill(client, n=3000, step_ms=3000, extra=BAD_ENTRIES)
    Archiver(client, ArchiveStore.open(str(tmp_path / "archive")), "e",
             ArchiveConfig(max_buffer_records=700)).run(until_idle=True)  # fmt: skip
    return redis_url, tmp_path / "archive", filled.pairs


def test_the_report_over_the_archive_equals_redis_and_jsonl(
    archived: tuple[str, Path, int], tmp_path: Path
) -> None:
    url, root, n = archived
    policy = load_policy(None)
    from_redis = analyze(Source("e", redis_url=url), policy)
    client = redis.Redis.from_url(url)
    pairs, outs = tmp_path / "pairs.jsonl", tmp_path / "outcomes.jsonl"
    pairs.write_bytes(b"".join(orjson.dumps(d) + b"\n" for d in read_window(client, "e")))
    with open(pairs, "ab") as fh:  # (the entries that are not JSON objects, as lines)
        fh.write(BAD_ENTRIES[0] + b"\n" + BAD_ENTRIES[2] + b"\n")
    outs.write_bytes(b"".join(orjson.dumps(d) + b"\n"
                              for d in read_window(client, "e", outcomes=True)))  # fmt: skip
    from_jsonl = analyze(Source("e", pairs_file=str(pairs), outcomes_file=str(outs)), policy)
    from_archive = analyze(Source("e", archive=str(root)), policy)
    pooled = analyze(Source("e", archive=str(root)), policy, executor="processes", workers=2)
    assert from_archive["data_quality"]["records"]["read"] == n
    assert from_archive["data_quality"]["records"]["invalid"] == len(BAD_ENTRIES)
    means = [v["mean"] for m in from_archive["metrics"].values() for v in m["variants"].values()]
    assert means and max(means) > 0  # outcomes stored a day later, in other partitions, joined
    assert_same(from_redis, from_archive)
    assert_same(from_jsonl, from_archive)
    assert_same(from_archive, pooled)
    jsonschema.validate(from_archive, SCHEMA)
    assert from_archive["archive"]["files"] >= 3 and from_archive["archive"]["hours"] == 3
    assert pooled["archive"]["executor"] == "processes" and pooled["archive"]["tasks"] > 1
    assert pooled["archive"]["cross_task_duplicates"] == 0
    bad = from_archive["data_quality"]["records"]["reasons"]
    assert any(e.startswith("pairs/experiment=e/date=2026-11-29/hour=12/part-x-")
               for r in bad for e in r["examples"])  # fmt: skip
    assert from_archive["window"]["earliest_available"] == pytest.approx(T0_MS / 1000)


def test_a_window_reads_its_hours_and_equals_the_redis_window(
    archived: tuple[str, Path, int]
) -> None:
    url, root, _n = archived
    policy = load_policy(None)
    since, until = T0_MS / 1000 + 1800, T0_MS / 1000 + 5400  # 10:30 to 11:30
    from_redis = analyze(Source("e", redis_url=url, since=since, until=until), policy)
    from_archive = analyze(Source("e", archive=str(root), since=since, until=until), policy)
    assert_same(from_redis, from_archive)
    records = from_archive["data_quality"]["records"]
    inside = records["read"] - records["outside_window"]["count"] - records["invalid"]
    assert inside == 1201  # 10:30:00 to 11:30:00 every 3 s, both ends included
    assert from_archive["archive"]["hours"] == 2


def _run(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "router", "analyze", "--experiment", "e", *args],
                          cwd=ROOT, capture_output=True, timeout=120)  # fmt: skip


def test_hours_without_data_and_unreadable_files_are_reported_not_fatal(
    archived: tuple[str, Path, int], tmp_path: Path
) -> None:
    _url, root, _n = archived
    day = root / "pairs/experiment=e/date=2026-11-29"
    shutil.rmtree(day / "hour=11")  # an hour without data
    victim = sorted((day / "hour=10").glob("*.parquet"))[0]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])  # truncated
    outcome_file = next((root / "outcomes").rglob("*.parquet"))
    shutil.copy(outcome_file, day / "hour=12" / "part-x-1-0_1-0.parquet")  # another kind
    pq.write_table(pa.table({"x": [1]}), day / "hour=12" / "part-x-2-0_2-0.parquet")
    (day / "hour=12" / "part-x-3-0_3-0.parquet").write_bytes(b"PAR1 not parquet")
    out = tmp_path / "r.json"
    proc = _run("--archive", str(root), "--format", "json", "-o", str(out), "--executor",
                "threads")  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode()
    report = json.loads(out.read_bytes())
    cov = report["archive"]
    assert cov["hours_without_data"] == 1
    assert cov["empty_hour_ranges"] == [["2026-11-29T11:00Z", "2026-11-29T12:00Z"]]
    assert cov["unreadable_files"]["count"] == 4
    reasons = {Path(e["path"]).name: e["reason"] for e in cov["unreadable_files"]["examples"]}
    assert reasons[victim.name].startswith("unreadable (")
    assert reasons["part-x-1-0_1-0.parquet"] == "foreign schema: a outcomes file among the pairs"
    assert reasons["part-x-2-0_2-0.parquet"].startswith("foreign schema: no stream_id")
    assert reasons["part-x-3-0_3-0.parquet"].startswith("unreadable (")
    assert 0 < report["data_quality"]["records"]["read"] < 3000
    assert cov["latest_archived"] == pytest.approx(T0_MS / 1000 + 2999 * 3 + 0.001)
    assert not cov["ends_before_window"]
    md = _run("--archive", str(root), "--executor", "threads")
    assert md.returncode == 0
    assert b"1 hours without data" in md.stdout and b"**4 unreadable files skipped**" in md.stdout
    assert b"archived up to 2026-11-29T12:29:57Z" in md.stdout
    # a window past what the archiver wrote: the archive lags, and the report says so
    lagging = _run("--archive", str(root), "--executor", "threads", "--since",
                   str(T0_MS / 1000), "--until", str(T0_MS / 1000 + 5 * 3600))  # fmt: skip
    assert lagging.returncode == 0
    assert b"the archive ends before the window does" in lagging.stdout
    assert b"hours without data (2026-11-29T11:00Z to 2026-11-29T12:00Z, " in lagging.stdout


def test_an_archive_that_is_not_there_is_a_clear_error(tmp_path: Path) -> None:
    proc = _run("--archive", str(tmp_path / "nowhere"))
    assert proc.returncode == 3
    assert b"nowhere: no such directory" in proc.stderr
    proc = _run("--pairs", str(tmp_path / "x.jsonl"), "--executor", "processes")
    assert proc.returncode == 2 and b"--executor needs --archive" in proc.stderr
    proc = _run("--archive", str(tmp_path), "--executor", "dask://nohost")
    assert proc.returncode == 2 and b"dask://HOST:PORT" in proc.stderr


def test_outcomes_of_old_requests_arrive_in_later_partitions(
    redis_url: str, tmp_path: Path
) -> None:
    """Outcomes stored three days after their requests, in partitions of other dates."""
    client = redis.Redis.from_url(redis_url)
    fill(client, n=1500, step_ms=1000, outcome_delay_ms=72 * HOUR_MS)
    root = tmp_path / "a"
    Archiver(client, ArchiveStore.open(str(root)), "e", ArchiveConfig()).run(until_idle=True)
    dates = sorted(p.name for p in (root / "outcomes/experiment=e").iterdir())
    assert dates == ["date=2026-12-02"]
    policy = load_policy(None)
    since, until = T0_MS / 1000, T0_MS / 1000 + 3600
    a = analyze(Source("e", archive=str(root), since=since, until=until), policy)
    r = analyze(Source("e", redis_url=redis_url, since=since, until=until), policy)
    assert_same(r, a)
    joined = [v["mean"] for m in a["metrics"].values() for v in m["variants"].values()]
    assert joined and max(joined) > 0  # (outcomes joined: missing ones would count as zero)


def test_a_window_redis_already_trimmed_is_read_from_the_archive(
    archived: tuple[str, Path, int]
) -> None:
    """`--archive` with `--redis` (and the promotion controller's analyzer): entries before
    the streams' first id come from the archive, the rest from Redis; the report is the one
    over the untrimmed streams."""
    from router.promotion.analyzer import analyzer_from_policy

    url, root, _n = archived
    policy = load_policy(None)
    client = redis.Redis.from_url(url)
    late = {"v": 1, "experiment": "e", "request_id": "late-1", "ts": T0_MS / 1000 + 4 * 3600,
            "unit": "u-late", "served": "challenger", "mirrored": False, "segment": {},
            "champion": None, "contract": None, "challenger": {
                "version": "c2", "status": 200, "latency_ms": 5.0, "prediction": 0.4,
                "error": None}}  # fmt: skip
    client.xadd("e:pairs", {"r": orjson.dumps(late)}, id=f"{T0_MS + 4 * HOUR_MS}-0")
    before = analyze(Source("e", redis_url=url), policy)  # (the late record: Redis only)
    cut = T0_MS + 5400 * 1000  # the streams now begin at 11:30 (pairs), 11:30 next day
    client.xtrim("e:pairs", minid=f"{cut}-0", approximate=False)
    client.xtrim("e:outcomes", minid=f"{cut + 24 * HOUR_MS}-0", approximate=False)
    stitched = analyze(Source("e", redis_url=url, archive=str(root)), policy)
    assert stitched["archive"]["redis_from"] == cut / 1000
    records = stitched["data_quality"]["records"]
    assert records["read"] == before["data_quality"]["records"]["read"] == _n + 1
    assert_same(before, stitched)
    jsonschema.validate(stitched, SCHEMA)
    analyse = analyzer_from_policy(None, url, str(root))
    verdict = analyse([], [], experiment="e", split=0.5, since=T0_MS / 1000,
                      until=T0_MS / 1000 + 3 * 3600)  # fmt: skip
    assert isinstance(verdict, dict)
    assert verdict["archive"]["redis_from"] == cut / 1000
    only_redis = analyze(Source("e", redis_url=url), policy)
    assert only_redis["data_quality"]["records"]["read"] < records["read"] / 2


def test_small_files_folded_together_equal_one_page_a_file(
    archived: tuple[str, Path, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Consecutive small files are read into one page (archive_read.file_groups): the report
    is the one of a page a file, and a group stays within its bounds."""
    from router.analysis import archive_read

    _url, root, _n = archived
    policy = load_policy(None)
    grouped = analyze(Source("e", archive=str(root)), policy)
    store = ArchiveStore.open(str(root))
    files = archive_read.plan(store, "pairs", "e", None, None).files
    groups = archive_read.file_groups(files)
    assert len(groups) < len(files) and [f for g in groups for f in g] == files
    monkeypatch.setattr(archive_read, "PAGE_FILES", 1)  # a page a file, as before
    assert len(archive_read.file_groups(files)) == len(files)
    single = analyze(Source("e", archive=str(root)), policy)
    assert_same(grouped, single)
    assert grouped["data_quality"] == single["data_quality"]  # (examples too: same places)


def test_cuped_history_before_the_window_is_read_from_the_archive(
    redis_url: str, tmp_path: Path
) -> None:
    """With --since, the archive's outcomes over cuped.history_s before it are read too (unit
    rows only, as from Redis): the adjusted results equal the Redis report's, with either
    executor."""
    from router.analysis import parse_policy
    from tests.analysis.test_cuped import T0 as C0
    from tests.analysis.test_cuped import _experiment
    from tests.analysis.test_report import xadd_records

    recs, outs = _experiment(1200, 0.8, 0.0, seed=7)
    stray = {"v": 1, "experiment": "e", "request_id": "old-request", "metric": "rev",
             "value": 1.0, "ts": C0 - 1800.0}  # fmt: skip
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    xadd_records(client, "e:pairs", recs)
    rows = [o if "ts" in o else o | {"ts": C0 + 1300.0} for o in [*outs, stray]]
    xadd_records(client, "e:outcomes", sorted(rows, key=lambda o: o["ts"]))
    root = tmp_path / "archive"
    Archiver(client, ArchiveStore.open(str(root)), "e", ArchiveConfig()).run(until_idle=True)
    client.close()
    policy = parse_policy({})
    since = C0 - 1.0
    from_redis = analyze(Source("e", redis_url=redis_url, since=since), policy, split=0.5)
    for executor in ("threads", "processes"):
        rep = analyze(Source("e", archive=str(root), since=since), policy, split=0.5,
                      executor=executor, workers=2)  # fmt: skip
        cu = rep["metrics"]["rev"]["cuped"]
        assert cu["state"] == "ok" and sum(cu["units_with_covariate"].values()) == 1200
        assert cu == from_redis["metrics"]["rev"]["cuped"]
        assert rep["counts"]["outcomes"]["outside_window"] == 1  # the request-joined stray


def test_a_file_of_several_row_groups_is_made_a_part_at_a_time_into_the_same_page(
    archived: tuple[str, Path, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file of several row groups is read and converted a few row groups at a time
    (archive_read.file_parts, _parts_page): the page, and so the report, is exactly the one of
    the file read whole, windows cutting through files and entries kept whole included."""
    from router.analysis import archive_read
    from router.analysis.frames import record_schema

    _url, root, _n = archived
    copy = tmp_path / "row-groups"
    shutil.copytree(root, copy)
    for path in (copy / "pairs").rglob("*.parquet"):  # row groups of 97 rows
        pq.write_table(pq.ParquetFile(path).read(), path, row_group_size=97)
    monkeypatch.setattr(archive_read, "PAGE_FILES", 1)  # a page a file
    store = ArchiveStore.open(str(copy))
    files = archive_read.plan(store, "pairs", "e", None, None).files
    monkeypatch.setattr(archive_read, "PART_ROWS", 200)
    parts = archive_read.file_parts(store, files[0])
    rows = pq.ParquetFile(copy / files[0].path).metadata.num_rows
    assert [p.row_groups for p in parts] == [
        tuple(range(i, min(i + 2, -(-rows // 97)))) for i in range(0, -(-rows // 97), 2)
    ]  # (two row groups of 97 rows a part: 194 <= 200)
    assert archive_read.file_parts(store, files[0], rows=10**9) == [files[0]]

    schema = record_schema(numeric=True, fields=False)
    plain = [f for f in files
             if pq.ParquetFile(copy / f.path).read(["raw"]).column("raw").null_count
             == pq.ParquetFile(copy / f.path).metadata.num_rows]  # fmt: skip
    assert plain and len(plain) < len(files)  # (some files hold entries kept whole)
    made = archive_read._parts_page(store, plain[0], schema, None, None, 1e10, None)
    assert made is not None
    monkeypatch.setattr(archive_read, "PART_ROWS", 10**9)
    whole = archive_read.file_page(store, plain[0], schema, None, None, 1e10)
    assert made.cols.equals(whole.cols) and made.segments == whole.segments
    assert made.experiments == whole.experiments

    policy = load_policy(None)
    windows = [(None, None), (T0_MS / 1000 + 1800, T0_MS / 1000 + 5400)]
    reports = {}
    for part_rows in (10**9, 200):
        monkeypatch.setattr(archive_read, "PART_ROWS", part_rows)
        for since, until in windows:
            rep = analyze(Source("e", archive=str(copy), since=since, until=until), policy)
            del rep["meta"]["generated_at"]
            reports[part_rows, since] = rep
    for since, _until in windows:
        assert reports[200, since] == reports[10**9, since]  # identical, not only close
    assert reports[200, None]["data_quality"]["records"]["invalid"]  # (entries kept whole)
