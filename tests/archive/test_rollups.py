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
from router.analysis.rollups import UNCHECKED, build_rollups
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
                                            "fallback": None, "outcome_index": "snapshot",
                                            "unchecked": UNCHECKED}  # fmt: skip
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


def test_retention_deletes_rollups_with_their_partitions(rolled: tuple[redis.Redis, Path]) -> None:
    from router.archive.archiver import delete_before

    _client, root = rolled
    assert len(list((root / "rollups").rglob("rollup-*.pkl"))) == 3
    delete_before(ArchiveStore.open(str(root)), "e", T0_MS / 1000 + 3600)  # the first hour
    assert len(list((root / "rollups").rglob("rollup-*.pkl"))) == 2
    merged = analyze(Source("e", archive=str(root), rollups=True), load_policy(None))
    assert merged["archive"]["rollups"]["used_hours"] == 2


def _rollup_files(root: Path, pattern: str = "rollup-*.pkl") -> list[Path]:
    return sorted((root / "rollups").rglob(pattern))


@pytest.fixture
def replayed(redis_url: str, tmp_path: Path) -> tuple[redis.Redis, Path]:
    """2.5 hours of records whose last hour also holds a replay (the same entry, arriving
    later) of a record of the second hour and, twice, one of the last hour itself."""
    client = redis.Redis.from_url(redis_url)
    filled = fill(client, n=3000, step_ms=3000)
    entries = dict(client.xrange("e:pairs"))
    second = entries[filled.pair_ids[1500].encode()]  # (ts in the second hour)
    last = entries[filled.pair_ids[-10].encode()]
    end = int(filled.pair_ids[-1].split("-")[0])
    for j, fields in enumerate((second, last, last)):
        client.xadd("e:pairs", fields, id=f"{end + 1}-{j}")
    root = tmp_path / "archive"
    _archive(client, root)
    assert len(build_rollups(str(root), "e", load_policy(None))) == 3
    return client, root


def test_a_replay_in_a_later_hour_is_dropped_once(replayed: tuple[redis.Redis, Path]) -> None:
    _client, root = replayed
    policy = load_policy(None)
    raw = analyze(Source("e", archive=str(root)), policy, executor="threads")
    assert raw["counts"]["duplicates_skipped"] == 3
    merged = analyze(Source("e", archive=str(root), rollups=True), policy)
    # the second and last hours (the two copies) re-folded as one run; the first merged
    assert merged["archive"]["rollups"]["used_hours"] == 1
    assert merged["archive"]["rollups"]["refolded_hours"] == {"replayed": 2}
    assert merged["counts"]["duplicates_skipped"] == 3
    assert_same(raw, merged)
    # the id file the late record points at, gone: that hour re-folded, and with it the next
    (second,) = _rollup_files(root, "ids-*.npy")[1:2]
    second.unlink()
    merged = analyze(Source("e", archive=str(root), rollups=True), policy)
    assert merged["archive"]["rollups"]["refolded_hours"] == {"unreadable": 1, "replayed": 1}
    assert_same(raw, merged)


def test_a_replay_found_among_late_records_of_two_hours(redis_url: str, tmp_path: Path) -> None:
    """Both copies late (their ts in an hour that does not hold the record): found by the
    late records of the two hours, not through an id file."""
    client = redis.Redis.from_url(redis_url)
    filled = fill(client, n=1200, step_ms=3000)  # one hour
    rec = orjson.loads(dict(client.xrange("e:pairs"))[filled.pair_ids[5].encode()][b"r"])
    rec["request_id"] = "replayed-twice"
    end = int(filled.pair_ids[-1].split("-")[0])
    for k in (1, 2):  # two copies of a record of the first hour, in the next two hours
        client.xadd("e:pairs", {"r": orjson.dumps(rec)}, id=f"{end + k * HOUR_MS}-0")
        client.xadd("e:pairs", {"r": orjson.dumps(rec | {"request_id": f"late-{k}"})},
                    id=f"{end + k * HOUR_MS}-1")  # fmt: skip
    root = tmp_path / "archive"
    _archive(client, root)
    assert len(build_rollups(str(root), "e", load_policy(None))) == 3
    policy = load_policy(None)
    raw = analyze(Source("e", archive=str(root)), policy, executor="threads")
    merged = analyze(Source("e", archive=str(root), rollups=True), policy)
    assert merged["archive"]["rollups"]["refolded_hours"] == {"replayed": 2}
    assert merged["counts"]["duplicates_skipped"] == raw["counts"]["duplicates_skipped"] == 1
    assert_same(raw, merged)


def test_late_outcomes_restamp_or_rebuild(rolled: tuple[redis.Redis, Path]) -> None:
    """An outcome archived after the rollups that joins none of an hour's requests leaves it
    merged; `router rollup` re-stamps such hours and rebuilds only the hour one joins."""
    client, root = rolled
    policy = load_policy(None)
    stray = {"v": 1, "experiment": "e", "request_id": "no-such-request", "unit": None,
             "metric": "converted", "value": 1.0, "ts": T0_MS / 1000 + 41 * 3600}  # fmt: skip
    client.xadd("e:outcomes", {"r": orjson.dumps(stray)}, id=f"{T0_MS + 41 * HOUR_MS}-0")
    _archive(client, root)
    merged = analyze(Source("e", archive=str(root), rollups=True), policy)
    assert merged["archive"]["rollups"]["used_hours"] == 3
    assert merged["archive"]["rollups"]["outcome_index"] == "read"  # (a file since the build)
    assert_same(analyze(Source("e", archive=str(root)), policy, executor="threads"), merged)
    assert build_rollups(str(root), "e", policy) == []  # (re-stamped, none rebuilt)
    merged = analyze(Source("e", archive=str(root), rollups=True), policy)
    assert merged["archive"]["rollups"]["outcome_index"] == "snapshot"  # (the new build's)
    assert_same(analyze(Source("e", archive=str(root)), policy, executor="threads"), merged)
    assert len(list((root / "rollups").rglob("manifests/*/outcomes-*.json"))) == 1
    late = stray | {"request_id": "1-000002000", "ts": T0_MS / 1000 + 42 * 3600}
    client.xadd("e:outcomes", {"r": orjson.dumps(late)}, id=f"{T0_MS + 42 * HOUR_MS}-0")
    _archive(client, root)
    merged = analyze(Source("e", archive=str(root), rollups=True), policy)
    assert merged["archive"]["rollups"]["refolded_hours"] == {"outcomes": 1}
    raw = analyze(Source("e", archive=str(root)), policy, executor="threads")
    assert_same(raw, merged)
    assert build_rollups(str(root), "e", policy) == [T0_MS // 1000 + 3600]  # that hour only
    again = analyze(Source("e", archive=str(root), rollups=True), policy)
    assert again["archive"]["rollups"]["used_hours"] == 3
    assert_same(raw, again)
    # a window starting after the outcomes joined were stored: every hour re-folded
    since = T0_MS / 1000 + 30 * 3600
    cut = analyze(Source("e", archive=str(root), rollups=True, since=since), policy)
    assert cut["archive"]["rollups"]["used_hours"] == 0


class _Gadget:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return os.system, ("touch pwned",)


def test_rollups_are_read_with_a_restricted_unpickler(
    rolled: tuple[redis.Redis, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pickle
    from collections import Counter

    from router.analysis.rollups import RollupRefused, loads

    assert loads(pickle.dumps(Counter(a=1))) == Counter(a=1)
    with pytest.raises(RollupRefused, match=r"(posix|os)\.system"):
        loads(pickle.dumps(_Gadget()))
    with pytest.raises(RollupRefused, match=r"rollups\.build_rollups"):
        loads(pickle.dumps(build_rollups))  # (a function of the package: not a class)
    _client, root = rolled
    monkeypatch.chdir(tmp_path)
    first = _rollup_files(root)[0]
    first.write_bytes(pickle.dumps(_Gadget()))
    policy = load_policy(None)
    merged = analyze(Source("e", archive=str(root), rollups=True), policy)
    assert merged["archive"]["rollups"]["refolded_hours"] == {"unreadable": 1}
    assert not (tmp_path / "pwned").exists()
    assert_same(analyze(Source("e", archive=str(root)), policy, executor="threads"), merged)


def test_a_rollup_of_another_version_is_refolded(rolled: tuple[redis.Redis, Path]) -> None:
    import pickle

    from router.analysis.rollups import AGGREGATE_VERSION, loads

    _client, root = rolled
    first = _rollup_files(root)[0]
    r = loads(first.read_bytes())
    r.version = AGGREGATE_VERSION - 1
    first.write_bytes(pickle.dumps(r))
    ids = _rollup_files(root, "ids-*.npy")[1]
    ids.write_bytes(ids.read_bytes()[:-8])  # an id file cut short (read when needed)
    policy = load_policy(None)
    merged = analyze(Source("e", archive=str(root), rollups=True), policy)
    assert merged["archive"]["rollups"]["refolded_hours"] == {"version": 1}
    raw = analyze(Source("e", archive=str(root)), policy, executor="threads")
    assert_same(raw, merged)
    assert build_rollups(str(root), "e", policy) == [T0_MS // 1000]  # (rebuilt)
    # an hour's accumulator gone (read only when merged): that hour re-folded
    _rollup_files(root, "acc-*.pkl")[2].unlink()
    merged = analyze(Source("e", archive=str(root), rollups=True), policy)
    assert merged["archive"]["rollups"]["refolded_hours"] == {"unreadable": 1}
    assert merged["archive"]["rollups"]["outcome_index"] == "read"
    assert_same(raw, merged)
