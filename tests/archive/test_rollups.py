"""Hourly rollups (`router rollup`, `router analyze --archive --rollups`): the report merged
from rollups equals the raw re-fold; an outcome that arrives after a rollup, a changed policy
or a window cutting an hour make that hour re-fold from raw."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import redis
import yaml

from router.analysis.policy import load_policy
from router.analysis.reader import Source
from router.analysis.rollups import build_rollups
from router.analysis.run import analyze
from router.archive.archiver import Archiver
from router.archive.store import ArchiveStore
from router.config import ArchiveConfig
from tests.archive.conftest import HOUR_MS, T0_MS, fill
from tests.archive.test_analyze import assert_same
from tests.archive.test_command import BASE
from tests.helpers import ROOT


def _archive(client: redis.Redis, root: Path) -> None:
    Archiver(client, ArchiveStore.open(str(root)), "e",
             ArchiveConfig(max_buffer_records=700)).run(until_idle=True)  # fmt: skip


@pytest.fixture
def rolled(redis_url: str, tmp_path: Path) -> tuple[redis.Redis, Path]:
    """2.5 hours of records, outcomes a day later, archived and rolled up."""
    client = redis.Redis.from_url(redis_url)
    fill(client, n=3000, step_ms=3000)
    root = tmp_path / "archive"
    _archive(client, root)
    hours = build_rollups(str(root), "e", load_policy(None))
    assert len(hours) == 3
    assert build_rollups(str(root), "e", load_policy(None)) == []  # (already there)
    return client, root


def test_the_report_from_rollups_equals_the_raw_refold(rolled: tuple[redis.Redis, Path]) -> None:
    _client, root = rolled
    policy = load_policy(None)
    raw = analyze(Source("e", archive=str(root)), policy, executor="threads")
    merged = analyze(Source("e", archive=str(root), rollups=True), policy)
    assert merged["archive"]["rollups"] == {"used_hours": 3, "refolded_hours": {},
                                            "fallback": None}  # fmt: skip
    means = [v["mean"] for m in merged["metrics"].values() for v in m["variants"].values()]
    assert means and max(means) > 0  # (outcomes joined into the rollups)
    assert_same(raw, merged)
    # a window that cuts hours: those are re-folded, the report is still the raw one
    since, until = T0_MS / 1000 + 1800, T0_MS / 1000 + 5400
    raw_w = analyze(Source("e", archive=str(root), since=since, until=until), policy,
                    executor="threads")  # fmt: skip
    merged_w = analyze(Source("e", archive=str(root), since=since, until=until, rollups=True),
                       policy)  # fmt: skip
    assert merged_w["archive"]["rollups"]["refolded_hours"].get("window", 0) >= 2
    assert_same(raw_w, merged_w)


def test_an_outcome_after_the_rollup_refolds_its_hour(rolled: tuple[redis.Redis, Path]) -> None:
    client, root = rolled
    policy = load_policy(None)
    late = {"v": 1, "experiment": "e", "request_id": "1-000000005", "unit": None,
            "metric": "converted", "value": 1.0, "ts": T0_MS / 1000 + 40 * 3600}  # fmt: skip
    client.xadd("e:outcomes", {"r": orjson.dumps(late)}, id=f"{T0_MS + 40 * HOUR_MS}-0")
    _archive(client, root)
    raw = analyze(Source("e", archive=str(root)), policy, executor="threads")
    merged = analyze(Source("e", archive=str(root), rollups=True), policy)
    assert merged["archive"]["rollups"]["used_hours"] == 2
    assert merged["archive"]["rollups"]["refolded_hours"] == {"outcomes": 1}
    assert_same(raw, merged)
    # rebuilt, the hour is merged again
    assert len(build_rollups(str(root), "e", policy, rebuild=True)) == 3
    again = analyze(Source("e", archive=str(root), rollups=True), policy)
    assert again["archive"]["rollups"]["used_hours"] == 3
    assert_same(raw, again)


def test_another_policy_or_kind_does_not_use_them(
    rolled: tuple[redis.Redis, Path], tmp_path: Path
) -> None:
    _client, root = rolled
    other = tmp_path / "policy.yaml"
    other.write_text("segments:\n  max_tracked_values: 7\n")
    policy = load_policy(str(other))
    raw = analyze(Source("e", archive=str(root)), policy, executor="threads")
    merged = analyze(Source("e", archive=str(root), rollups=True), policy)
    assert merged["archive"]["rollups"]["refolded_hours"] == {"missing": 3}
    assert_same(raw, merged)
    value = analyze(Source("e", archive=str(root), rollups=True), load_policy(None), kind="value")
    assert value["archive"]["rollups"]["used_hours"] == 0
    # a truncated and a garbage rollup: named in the log, the hours re-folded, never a crash
    first, second = sorted((root / "rollups").rglob("rollup-*.pkl"))[:2]
    first.write_bytes(first.read_bytes()[:100])
    second.write_bytes(b"not a pickle")
    policy = load_policy(None)
    raw = analyze(Source("e", archive=str(root)), policy, executor="threads")
    merged = analyze(Source("e", archive=str(root), rollups=True), policy)
    assert merged["archive"]["rollups"]["refolded_hours"] == {"unreadable": 2}
    assert_same(raw, merged)
    assert len(build_rollups(str(root), "e", policy)) == 2  # (rebuilt)


def test_the_commands(rolled: tuple[redis.Redis, Path], tmp_path: Path) -> None:
    _client, root = rolled
    run = [sys.executable, "-m", "router"]
    r = subprocess.run([*run, "rollup", "--archive", str(root), "--experiment", "e"],
                       cwd=ROOT, capture_output=True, timeout=120)  # fmt: skip
    assert r.returncode == 0 and b"0 hours rolled up" in r.stdout
    r = subprocess.run([*run, "rollup", "--archive", str(tmp_path / "none"), "--experiment",
                        "e"], cwd=ROOT, capture_output=True, timeout=120)  # fmt: skip
    assert r.returncode == 3 and b"no such directory" in r.stderr
    cfg = {**BASE, "archive": {"uri": str(root), "rollup_lateness_s": 0}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(cfg))
    r = subprocess.run([*run, "rollup", "-c", str(tmp_path / "r.yaml"), "--rebuild"],
                       cwd=ROOT, capture_output=True, timeout=120)  # fmt: skip
    assert r.returncode == 0 and b"3 hours rolled up" in r.stdout, r.stderr
    cfg["archive"]["rollup_lateness_s"] = -1
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(cfg))
    r = subprocess.run([*run, "rollup", "-c", str(tmp_path / "r.yaml")], cwd=ROOT,
                       capture_output=True, timeout=120)  # fmt: skip
    assert r.returncode == 2 and b"rollup_lateness_s" in r.stderr
    r = subprocess.run([*run, "analyze", "--experiment", "e", "--pairs", "x.jsonl", "--rollups"],
                       cwd=ROOT, capture_output=True, timeout=120)  # fmt: skip
    assert r.returncode == 2 and b"--rollups needs --archive" in r.stderr
    out = tmp_path / "r.json"
    r = subprocess.run([*run, "analyze", "--experiment", "e", "--archive", str(root),
                        "--rollups", "--format", "json", "-o", str(out)],
                       cwd=ROOT, capture_output=True, timeout=120)  # fmt: skip
    assert r.returncode in (0, 1), r.stderr.decode()
    assert orjson.loads(out.read_bytes())["archive"]["rollups"]["used_hours"] == 3


def test_retention_deletes_rollups_with_their_partitions(
    rolled: tuple[redis.Redis, Path]
) -> None:
    from router.archive.archiver import delete_before

    _client, root = rolled
    assert len(list((root / "rollups").rglob("rollup-*.pkl"))) == 3
    delete_before(ArchiveStore.open(str(root)), "e", T0_MS / 1000 + 3600)  # the first hour
    assert len(list((root / "rollups").rglob("rollup-*.pkl"))) == 2
    merged = analyze(Source("e", archive=str(root), rollups=True), load_policy(None))
    assert merged["archive"]["rollups"]["used_hours"] == 2
