"""A/B/n (several challengers) over an archive: every executor (threads, a process pool, a Dask
cluster in tests/archive/test_dask.py) and the rollups give the report of the same records
read as JSONL, every challenger's view included. The stream names its second challenger only
in later hours (a challenger added during the window), so the challengers must be agreed across
partitions: a champion-served request of the first hours is in that challenger's view too."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import redis

from router.analysis import parse_policy
from router.analysis.reader import Source
from router.analysis.rollups import UNCHECKED, build_rollups
from router.analysis.run import analyze
from router.archive.archiver import Archiver
from router.archive.store import ArchiveStore
from router.config import ArchiveConfig
from tests.analysis.test_arms import abn_stream
from tests.archive.conftest import HOUR_MS, T0_MS
from tests.archive.test_analyze import assert_same

POLICY = parse_policy({"primary_metric": {"name": "conversion"}, "min_samples": 10}, "test")
SHARES = {"a": 0.25, "b": 0.25}
STEP_MS = 3000
N_UNITS = 1600  # two records each: 3200 records, 2.7 hours


def abn_records(only: str | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """An A/B/n stream (champion, a, b) over about 2.7 hours, records ``STEP_MS`` apart in
    stream time, outcomes a day later. Challenger ``b`` is named (served or mirrored) only
    from the second half on; a few QA requests are forced, a few units cross over, some
    records say why a mirror was skipped. ``only``: that challenger's records only (a two-arm
    stream that names its challenger)."""
    recs, outs = abn_stream(N_UNITS, seed=11)
    half = N_UNITS // 2
    kept: list[dict[str, Any]] = []
    for rec in recs:
        i = int(rec["unit"][1:])
        if i < half or only is not None:
            if rec.get("variant") not in (None, only or "a"):
                continue
            rec.pop("shadows", None)
        kept.append(rec)
    extra: list[dict[str, Any]] = []
    for k, rec in enumerate(kept[100:130]):  # forced QA requests
        f = copy.deepcopy(rec)
        f.update(request_id=f"forced-{k}", forced=True, unit=f"qa-{k % 3}")
        extra.append(f)
    firsts = {r["unit"]: r for r in reversed(kept) if r.get("variant") == "a"}
    for k, rec in enumerate(sorted(firsts.values(), key=lambda r: r["ts"])[:4]):  # crossover
        x = copy.deepcopy(rec)
        x.update(request_id=f"x{k}", served="champion", champion=x["challenger"],
                 challenger=None, mirrored=False)  # fmt: skip
        for key in ("variant", "arm", "shadows"):
            x.pop(key, None)
        extra.append(x)
    for k, rec in enumerate(kept[200:220]):
        if rec["served"] == "champion" and not rec["mirrored"]:
            rec["mirror_skipped"] = {"a": "throttled"} if k % 2 else {"b": "budget"}
    stream = sorted(kept + extra, key=lambda r: (r["ts"], r["request_id"]))
    by_id = {}
    for n, rec in enumerate(stream):  # stream time = record time, STEP_MS apart
        rec["ts"] = (T0_MS + n * STEP_MS) / 1000
        by_id[rec["request_id"]] = rec["ts"]
    out_rows = []
    for o in outs:
        if o["request_id"] in by_id:
            out_rows.append(dict(o, ts=by_id[o["request_id"]] + 24 * 3600))
    return stream, out_rows


def write_abn_archive(
    redis_url: str, tmp_path: Path, only: str | None = None
) -> tuple[Path, Source]:
    """The A/B/n stream XADDed to Redis, archived through the real archiver (several files
    per hour), and the same records and outcomes as JSONL files (the reference source)."""
    recs, outs = abn_records(only)
    client = redis.Redis.from_url(redis_url)
    pipe = client.pipeline()
    for rec in recs:
        pipe.xadd("e:pairs", {"r": orjson.dumps(rec)}, id=f"{round(rec['ts'] * 1000)}-0")
    seq: dict[int, int] = {}
    for o in sorted(outs, key=lambda o: o["ts"]):
        ms = round(o["ts"] * 1000)
        seq[ms] = seq.get(ms, -1) + 1
        pipe.xadd("e:outcomes", {"r": orjson.dumps(o)}, id=f"{ms}-{seq[ms]}")
    pipe.execute()
    root = tmp_path / "archive"
    Archiver(client, ArchiveStore.open(str(root)), "e",
             ArchiveConfig(max_buffer_records=300)).run(until_idle=True)  # fmt: skip
    client.close()
    pairs, outcomes = tmp_path / "pairs.jsonl", tmp_path / "outcomes.jsonl"
    pairs.write_bytes(b"\n".join(orjson.dumps(r) for r in recs) + b"\n")
    outcomes.write_bytes(b"\n".join(orjson.dumps(o) for o in outs) + b"\n")
    return root, Source("e", pairs_file=str(pairs), outcomes_file=str(outcomes))


def assert_abn(rep: dict[str, Any], ref: dict[str, Any]) -> None:
    """The report of the archive is the JSONL one, every challenger's view included."""
    assert rep["arms"]["challengers"] == ["a", "b"]
    assert rep["counts"]["forced"]["requests"] == 30
    assert rep["crossover"]["units"] == 4
    for arm in ("a", "b"):
        assert_same(rep["arms"]["comparisons"][arm], ref["arms"]["comparisons"][arm])
    assert_same(rep, ref)


@pytest.fixture
def abn(redis_url: str, tmp_path: Path) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    root, jsonl = write_abn_archive(redis_url, tmp_path)
    with_shares = analyze(jsonl, POLICY, shares=SHARES)
    discovered = analyze(Source("e", pairs_file=jsonl.pairs_file,
                                outcomes_file=jsonl.outcomes_file), POLICY)  # fmt: skip
    assert with_shares["arms"]["challengers"] == discovered["arms"]["challengers"] == ["a", "b"]
    # b's view holds the champion's requests of the first hours (before b was named)
    b_champion = with_shares["arms"]["comparisons"]["b"]["counts"]["per_variant"]["champion"]
    a_champion = with_shares["arms"]["comparisons"]["a"]["counts"]["per_variant"]["champion"]
    assert b_champion == a_champion > 0
    return root, with_shares, discovered


@pytest.mark.parametrize("executor", ["threads", "processes"])
@pytest.mark.parametrize("given", [True, False], ids=["shares", "discovered"])
def test_each_executor_gives_every_challengers_view(
    abn: tuple[Path, dict[str, Any], dict[str, Any]], executor: str, given: bool
) -> None:
    root, with_shares, discovered = abn
    rep = analyze(Source("e", archive=str(root)), POLICY, executor=executor, workers=2,
                  shares=SHARES if given else None)  # fmt: skip
    assert_abn(rep, with_shares if given else discovered)
    if executor == "processes":
        assert rep["archive"]["tasks"] > 1 and rep["archive"]["cross_task_duplicates"] == 0


def test_rollups_keep_every_challengers_view(
    abn: tuple[Path, dict[str, Any], dict[str, Any]],
) -> None:
    root, with_shares, discovered = abn
    assert len(build_rollups(str(root), "e", POLICY)) == 3
    for given, ref in ((True, with_shares), (False, discovered)):
        src = Source("e", archive=str(root), rollups=True)
        rep = analyze(src, POLICY, shares=SHARES if given else None)
        assert_abn(rep, ref)
        use = rep["archive"]["rollups"]
        # the first hour names a only: its rollup has no view for b, so it is re-folded
        assert use["fallback"] is None
        assert use["refolded_hours"] == {"arms": 1} and use["used_hours"] == 2, use


def test_a_single_named_challenger_with_forced_and_crossover(
    redis_url: str, tmp_path: Path
) -> None:
    """One challenger (a) all along: folded once on every path, rollups used whole; forced
    requests and crossover units are counted (and left out) on every path."""
    root, jsonl = write_abn_archive(redis_url, tmp_path, only="a")
    ref = analyze(jsonl, POLICY)
    assert "arms" not in ref and ref["counts"]["forced"]["requests"] == 30
    assert ref["crossover"]["units"] == 4
    for executor in ("threads", "processes"):
        assert_same(analyze(Source("e", archive=str(root)), POLICY, executor=executor), ref)
    assert len(build_rollups(str(root), "e", POLICY)) == 3
    rep = analyze(Source("e", archive=str(root), rollups=True), POLICY)
    assert rep["archive"]["rollups"] == {"used_hours": 3, "refolded_hours": {},
                                         "fallback": None, "outcome_index": "snapshot",
                                         "unchecked": UNCHECKED}  # fmt: skip
    assert_same(rep, ref)


def test_redis_stitched_to_the_archive_for_the_controller_and_get_report(
    redis_url: str, tmp_path: Path
) -> None:
    """`--redis` with `--archive` (the promotion controller's analyzer, `GET <prefix>/report`'s
    `router analyze`): the hour Redis no longer holds comes from the archive, where b is not
    named yet; the report is the one over the untrimmed stream, every view included."""
    import json
    import subprocess
    import sys

    import yaml

    from router.promotion.analyzer import analyzer_from_policy
    from tests.helpers import ROOT

    root, _jsonl = write_abn_archive(redis_url, tmp_path)
    until = (T0_MS + 3 * HOUR_MS) / 1000
    before = analyze(Source("e", redis_url=redis_url, since=T0_MS / 1000, until=until), POLICY,
                     split=0.5, shares=SHARES)  # fmt: skip
    client = redis.Redis.from_url(redis_url)
    cut = T0_MS + HOUR_MS  # the streams now begin with the second hour
    client.xtrim("e:pairs", minid=f"{cut}-0", approximate=False)
    client.xtrim("e:outcomes", minid=f"{cut + 24 * HOUR_MS}-0", approximate=False)
    client.close()
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(yaml.safe_dump({"primary_metric": {"name": "conversion"},
                                           "min_samples": 10}))  # fmt: skip
    analyse = analyzer_from_policy(str(policy_file), redis_url, str(root))
    rep = analyse([], [], experiment="e", split=0.5, since=T0_MS / 1000, until=until,
                  shares=SHARES)  # type: ignore[call-arg]  # fmt: skip
    assert isinstance(rep, dict) and rep["archive"]["redis_from"] == cut / 1000
    assert_abn(rep, before)
    proc = subprocess.run(
        [sys.executable, "-m", "router", "analyze", "--experiment", "e", "--redis", redis_url,
         "--archive", str(root), "--policy", str(policy_file), "--split", "0.5", "--shares",
         "a=0.25,b=0.25", "--since", str(T0_MS / 1000), "--until", str(until), "--format",
         "json"],
        cwd=ROOT, capture_output=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode()
    assert_abn(json.loads(proc.stdout), before)


def test_rollup_pages_read_ahead_fold_again_when_a_challenger_appears(
    redis_url: str, tmp_path: Path
) -> None:
    """`router rollup` reads the next hours' pages on parse threads while it folds (rollups.
    _hour_pages); when a page names a challenger after the first page that named one, the
    run is folded again from the files with every challenger, as reading them in turn does,
    and the pages read ahead for it are used up (the next run's pages stay in step)."""
    from router.analysis.archive_read import Coverage, load_archive_outcomes
    from router.analysis.distribute import FoldJob
    from router.analysis.frames import record_schema
    from router.analysis.outcomes_index import OutcomeIndex
    from router.analysis.rollups import _fold, _hour_pages
    from router.archive.scan import plan

    root, _jsonl = write_abn_archive(redis_url, tmp_path)
    store = ArchiveStore.open(str(root))
    files = plan(store, "pairs", "e", None, None).files
    first_hour = [f for f in files if f.hour == files[0].hour]
    later = [f for f in files if f.hour != files[0].hour]
    oi = OutcomeIndex()
    load_archive_outcomes(oi, store, "e", None, Coverage())
    oi.freeze()
    job = FoldJob(str(root), "e", POLICY, oi, "score", False, None, None, None,
                  record_schema(numeric=True, fields=False), 2e9)  # fmt: skip
    # a run whose first files name a only, then b: and a run after it
    runs = [(0, first_hour[:2] + later[:2]), (1, later[2:])]
    reading, pages = _hour_pages(job, runs)
    try:
        got = [_fold(job, fs, pages=p) for (_k, fs), p in zip(runs, pages, strict=True)]
    finally:
        reading.close()
    want = [_fold(job, fs) for _k, fs in runs]
    for g, w in zip(got, want, strict=True):
        assert list(g.aset.arms) == list(w.aset.arms) == ["a", "b"]
        assert np.array_equal(g.foreign, w.foreign)
        for name in ("a", "b"):
            ga, wa = g.aset.arms[name], w.aset.arms[name]
            assert (ga.records, ga.requests, ga.errors, ga.paired.pairs) == \
                (wa.records, wa.requests, wa.errors, wa.paired.pairs)  # fmt: skip
            assert ga.latency[0].counts.tolist() == wa.latency[0].counts.tolist()
            for part in ("exposures", "metrics"):
                assert getattr(ga.units, part)().sort("unit").equals(
                    getattr(wa.units, part)().sort("unit"))
