"""The columnar reader: pages of JSON lines into frames, fallbacks, fingerprint sets, chunking,
compaction of the unit table and the background parser."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import polars as pl
import pytest

from router.analysis import Policy, build_report, sketches
from router.analysis import units as units_mod
from router.analysis.accumulate import Accumulator
from router.analysis.frames import prepare_records, record_schema
from router.analysis.outcomes_index import OutcomeIndex
from router.analysis.policy import PrimaryMetric
from router.analysis.report import report_from
from router.analysis.run import Pages, Source, accumulate, fold, iter_chunks
from router.analysis.sketches import IdSet, LazyIdSet
from router.demo.synth import SynthSpec, dataset

from .test_report import assert_close, without_time


def _lines(recs: list[Any]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in recs)


def test_a_bad_line_costs_only_itself() -> None:
    recs, _ = dataset(SynthSpec(n=300, seed=31))
    bad_ts = dict(recs[5], request_id="bad-ts", ts="yesterday")
    data = _lines(recs[:100]) + b"{not json\n" + _lines([bad_ts]) + _lines(recs[100:])
    page = prepare_records(data, record_schema(numeric=True, fields=False))
    assert page.invalid == 2
    assert page.cols.height == 300
    assert set(page.cols["rid"].to_list()) == {r["request_id"] for r in recs}


def test_text_predictions_fall_back_to_the_general_schema_not_to_invalid() -> None:
    recs, _ = dataset(SynthSpec(n=200, seed=32))
    recs[50]["champion"]["prediction"] = "n/a"  # a score model answering text, once
    page = prepare_records(_lines(recs), record_schema(numeric=True, fields=False))
    assert page.invalid == 0 and page.cols.height == 200
    assert page.cols["cp"].dtype == pl.String


def test_segment_keys_first_seen_late_in_a_page_are_kept() -> None:
    """Segments are read as JSON text, so a key that appears only after the rows polars would
    sample for a schema is not dropped."""
    recs, outs = dataset(SynthSpec(n=2000, seed=33))
    for i, r in enumerate(recs):
        if i >= 1500:
            r["segment"] = dict(r.get("segment") or {}, plan="pro" if i % 2 else "free")
    rep = build_report(recs, outs, experiment="synth", split=0.5)
    plans = {row["value"]: row for row in rep["segments"]["fields"]["plan"]}
    assert set(plans) == {"pro", "free"}
    assert sum(sum(row["requests"]) for row in plans.values()) == 500


def test_idset_filter_reuses_a_querys_words_only_for_that_array() -> None:
    """A page queried then added as it is (the same array) marks the filter with the words
    its query located; the filter ends as one marked from scratch, also across its
    rebuilds, and another array (or a query past the remembered size) is located again."""
    rng = np.random.default_rng(35)
    reused, fresh = IdSet(), IdSet()
    hits = 0
    for i in range(60):
        batch = np.unique(rng.integers(-(2**62), 2**62, int(rng.integers(1, 3000))))
        for ids, same in ((reused, True), (fresh, False)):
            seen = ids.contains(batch, presorted=True)
            assert not seen.any()
            if same and ids._probe is not None:
                hits += ids._probe[0] is batch
            ids.add_new(batch if same else batch.copy(), presorted=True)
            assert ids._probe is None  # (used or dropped by the add)
        if i:  # (the filter is built at the first query of a set holding ids)
            assert reused._words is not None and fresh._words is not None
            assert np.array_equal(reused._words, fresh._words), i
    assert hits > 40
    big = np.arange(sketches._PROBE_MAX + 1, dtype=np.int64)
    reused.contains(big, presorted=True)
    assert reused._probe is None


def test_idset_reserved_filter_is_not_rebuilt_and_answers_the_same() -> None:
    """A set sized for the ids to come keeps its filter (no rebuild from the runs) and
    answers as one that grows; past the estimate it grows as before."""
    rng = np.random.default_rng(36)
    grown, sized = IdSet(), IdSet()
    sized.reserve(40_000)
    words = sized._words
    assert words is not None and words.size * 64 >= 40_000 * IdSet.BITS_PER_ID
    for _ in range(30):
        batch = np.unique(rng.integers(-(2**62), 2**62, 1000))
        probe = np.sort(np.concatenate([batch, grown.values()[:50]]))
        for ids in (grown, sized):
            assert ids.contains(probe, presorted=True).tolist() == \
                np.isin(probe, grown.values()).tolist()  # fmt: skip
        for ids in (grown, sized):
            ids.add_new(batch, presorted=True)
    assert sized._words is words  # (never rebuilt)
    assert sized.values().tolist() == grown.values().tolist()
    for _ in range(40):  # (past the estimate: rebuilt, twice as large)
        sized.add_new(np.unique(rng.integers(-(2**62), 2**62, 2000)))
        sized.contains(np.zeros(1, np.int64))
    assert sized._words is not None and sized._words.size > words.size


def test_idset_matches_a_python_set() -> None:
    rng = np.random.default_rng(34)
    ids, ref = IdSet(), set()
    for _ in range(40):
        batch = rng.integers(-(2**40), 2**40, rng.integers(1, 500))
        batch = np.unique(batch)
        seen = ids.contains(batch)
        assert seen.tolist() == [int(x) in ref for x in batch]
        ids.add_new(batch[~seen])
        ref.update(int(x) for x in batch)
    assert len(ids) == len(ref)
    assert ids.values().tolist() == sorted(ref)
    other = IdSet()
    extra = np.unique(rng.integers(-(2**40), 2**40, 300))
    other.add_new(extra)
    ids.merge(other)
    assert ids.values().tolist() == sorted(ref | {int(x) for x in extra})


def test_idset_merges_count_the_ids_they_held_already() -> None:
    rng = np.random.default_rng(37)
    base, ref, repeats = IdSet(), set(), 0
    for _ in range(6):  # parts that share some ids with the parts before them
        part = IdSet()
        fresh = np.unique(rng.integers(-(2**40), 2**40, 400))
        old = np.array(sorted(ref)[:7], dtype=np.int64)
        ids = np.setdiff1d(np.unique(np.concatenate([fresh, old])), [])
        for i in range(0, ids.size, 90):  # several runs in the part
            part.add_new(ids[i : i + 90])
        repeats += len(ref & {int(x) for x in ids})
        base.merge(part)
        assert base.contains(ids).all()  # membership holds before any compaction
        ref |= {int(x) for x in ids}
    assert base.compact() == repeats and len(base) == len(ref)
    assert base.values().tolist() == sorted(ref)
    base.add_new(np.array([2**41], dtype=np.int64))
    assert len(base) == len(ref) + 1 and base.repeats == repeats


@pytest.mark.parametrize("cap", [1 << 22, 700])
def test_idset_filter_and_capped_runs_stay_exact(monkeypatch: pytest.MonkeyPatch,
                                                 cap: int) -> None:  # fmt: skip
    """Full-width fingerprints through the filter's growth, capped runs, merges and pickling:
    the same answers as a Python set (the filter only ever lets too many through)."""
    import pickle

    monkeypatch.setattr(IdSet, "RUN_CAP", cap)
    if cap < IdSet.RUN_CAP:
        monkeypatch.setattr(sketches, "_BLOCK", 100)  # the filter's passes in blocks
    rng = np.random.default_rng(41)
    ids, ref = IdSet(), set()
    pool = rng.integers(-(2**63), 2**63 - 1, 30_000, dtype=np.int64)
    for i in range(60):
        batch = np.unique(rng.choice(pool, rng.integers(1, 900)))
        if i % 3:  # a sorted page, or the ids in any order
            seen = ids.contains(batch, presorted=True)
            ids.add_new(batch[~seen], presorted=True)
        else:
            shuffled = rng.permutation(batch)
            seen = ids.contains(shuffled)[np.argsort(shuffled)]
            ids.add_new(rng.permutation(batch[~seen]))
        assert seen.tolist() == [int(x) in ref for x in batch]
        ref.update(int(x) for x in batch)
        if i == 30:
            ids = pickle.loads(pickle.dumps(ids))  # (the filter is rebuilt, not pickled)
    assert len(ids) == len(ref) and ids.values().tolist() == sorted(ref)
    assert max(r.size for r in ids.runs) < 2 * cap
    probe = np.sort(pool)
    assert ids.contains(probe, presorted=True).tolist() == [int(x) in ref for x in probe]
    other = IdSet()
    extra = np.unique(rng.integers(-(2**63), 2**63 - 1, 2000, dtype=np.int64))
    shared = np.array(sorted(ref)[::5], dtype=np.int64)
    other.add_new(np.unique(np.concatenate([extra, shared])))
    ids.merge(other)
    both = np.unique(np.concatenate([np.array(sorted(ref), dtype=np.int64), extra]))
    assert ids.contains(both, presorted=True).all()
    assert ids.compact() == shared.size and len(ids) == len(ref | {int(x) for x in extra})
    absent = rng.integers(-(2**63), 2**63 - 1, 5000, dtype=np.int64)
    absent = absent[~np.isin(absent, both)]
    assert not ids.contains(absent).any()


def test_lazy_idset_after_merges() -> None:
    rng = np.random.default_rng(43)
    a, b, ref = LazyIdSet(), LazyIdSet(), set()
    for s in (a, b):
        for _ in range(5):
            batch = np.unique(rng.integers(-(2**63), 2**63 - 1, 300, dtype=np.int64))
            fresh = batch[~np.isin(batch, list(ref))] if s is a else batch
            s.add_new(fresh)
            ref.update(int(x) for x in fresh)
    b.add_new(np.array(sorted(ref)[:10], dtype=np.int64))  # (b knows some of a's ids)
    b.contains(np.zeros(1, dtype=np.int64))  # (b's ids partly sorted into runs)
    a.merge(b)
    assert len(a) == len(ref)
    probe = np.array(sorted(ref), dtype=np.int64)
    assert a.contains(probe).all()
    assert not a.contains(np.array([7, -7], dtype=np.int64)).any()


def test_outcome_lookup_and_a_pickled_index() -> None:
    import pickle

    from router.analysis.outcomes_index import _slices

    rng = np.random.default_rng(38)
    for _ in range(200):
        h = np.sort(rng.integers(0, 40, rng.integers(0, 60)))
        q = np.sort(rng.integers(-5, 50, rng.integers(0, 40)))
        left, right = _slices(h, q)
        assert left.tolist() == np.searchsorted(h, q, "left").tolist()
        assert right.tolist() == np.searchsorted(h, q, "right").tolist()
    _recs, outs = dataset(SynthSpec(n=800, seed=38))
    oi = OutcomeIndex()
    oi.add_all(outs + outs[:50], "synth")  # replayed rows: counted once
    copy = pickle.loads(pickle.dumps(oi))
    for a, b in zip(oi.rows, copy.rows, strict=True):
        assert a.tolist() == b.tolist()
    assert copy.metrics == oi.metrics and copy.duplicate_rows == oi.duplicate_rows == 50
    assert copy.by_unit.equals(oi.by_unit)
    with pytest.raises(RuntimeError, match="read-only"):
        copy.add_all(outs[:1], "synth")


def _join_by_lookup(oi: OutcomeIndex, q: np.ndarray) -> tuple[list[int], list[int], list[float]]:
    """The request join as slices of :meth:`OutcomeIndex.lookup`, record by record."""
    left, right = oi.lookup(q)
    _h, met, val = oi.rows
    rec = [i for i in range(q.size) for _ in range(int(right[i] - left[i]))]
    at = [j for i in range(q.size) for j in range(int(left[i]), int(right[i]))]
    return rec, met[at].tolist(), val[at].tolist()


def test_the_join_equals_slicing_the_lookup() -> None:
    """The directory join (OutcomeIndex.join) finds every outcome row of each record, several
    rows of one request in the order they were added, duplicates (by id or by content) once;
    fingerprints at the edges of the int64 range and of the directory's buckets included."""
    rng = np.random.default_rng(14)
    for trial in range(60):
        oi = OutcomeIndex()
        n = int(rng.integers(0, 400))
        rids = [f"r{int(x)}" for x in rng.integers(0, max(1, n // 2), n)]  # (repeats: runs)
        rows = []
        for k, rid in enumerate(rids):
            row = {"experiment": "e", "request_id": rid, "metric": ["a", "b"][k % 2],
                   "value": float(rng.integers(0, 3)), "ts": 1.7e9 + k}  # fmt: skip
            if k % 3 == 0:
                row["id"] = f"id{k}"
            rows.append(row)
        oi.add_all(rows + rows[: n // 4], "e")  # (replays: deduplicated)
        assert oi.duplicate_rows == n // 4
        h = oi.rows[0]
        extra = np.array([np.iinfo(np.int64).min, np.iinfo(np.int64).max, 0, -1], np.int64)
        pool = np.concatenate([h, h + 1, h - 1, extra, rng.integers(-(2**63), 2**63 - 1, 50)])
        q = np.unique(rng.choice(pool, size=min(pool.size, 300), replace=False))
        if trial % 2:
            q = rng.permutation(q)  # (the join does not need sorted records)
        rec, met, val = oi.join(q)
        want = _join_by_lookup(oi, q)
        assert (rec.tolist(), met.tolist(), val.tolist()) == want
    with pytest.raises(RuntimeError, match="already joined"):
        oi.add_all(rows[:1], "e")


def test_chunks_keep_lines_whole(tmp_path: Path) -> None:
    lines = [orjson.dumps({"i": i, "pad": "x" * (i % 13)}) for i in range(200)]
    path = tmp_path / "f.jsonl"
    path.write_bytes(b"\n".join(lines))  # no newline at the end
    chunks = list(iter_chunks(str(path), size=37))
    assert all(c.endswith(b"\n") for c in chunks[:-1])
    assert b"".join(chunks).split(b"\n") == lines


def test_unit_table_compaction_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Compacting the unit tables after every page or two, or rarely, in one shard or in
    :data:`units.SHARDS` by a hash of the unit: the report is the same."""
    policy = Policy(min_samples=100, primary_metric=PrimaryMetric(name="converted"))
    recs, outs = dataset(SynthSpec(n=5000, units=400, seed=35, conversion_uplift=0.05))

    def run() -> dict[str, Any]:
        oi = OutcomeIndex()
        oi.add_all(outs, "synth")
        acc = Accumulator(policy, oi, experiment="synth")
        for i in range(0, len(recs), 250):  # many pages: many pending unit frames
            acc.add(recs[i : i + 250])
        return without_time(report_from(acc, experiment="synth", split=0.5))

    plain = run()
    monkeypatch.setattr(units_mod, "_MIN_COMPACT", 50)  # compact after every page or two
    assert_close(run(), plain)
    monkeypatch.setattr(units_mod, "SHARDS", 1)
    assert_close(run(), plain)


def test_a_failing_reader_raises_in_the_folding_thread() -> None:
    recs, _ = dataset(SynthSpec(n=100, seed=36))

    def chunks() -> Iterator[bytes]:
        yield _lines(recs)
        raise OSError("disk went away")

    acc = Accumulator(Policy(), OutcomeIndex(), experiment="synth")
    pages = Pages(chunks(), record_schema(numeric=True, fields=False), workers=2)
    try:
        with pytest.raises(OSError, match="disk went away"):
            fold(acc, pages)
    finally:
        pages.close()
    assert acc.records == 100


def test_the_reader_holds_a_bounded_number_of_pages() -> None:
    """Pages parses ahead of the fold, but no further than ``ahead`` pages in its queue plus
    the one its reader holds until there is room: pages are tens of MB."""
    import time

    recs, _ = dataset(SynthSpec(n=400, seed=38))
    pulled: list[int] = []

    def chunks() -> Iterator[bytes]:
        for i in range(0, 400, 40):
            pulled.append(i)
            yield _lines(recs[i : i + 40])

    for ahead in (1, 3):
        pulled.clear()
        pages = Pages(chunks(), record_schema(numeric=True, fields=False), workers=2,
                      ahead=ahead)  # fmt: skip
        try:
            deadline = time.monotonic() + 10
            while len(pulled) < ahead + 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.3)  # (time to read further, were it allowed to)
            assert len(pulled) == ahead + 1
            got = [p.cols.height for p in pages]
        finally:
            pages.close()
        assert got == [40] * 10 and len(pulled) == 10


def test_missing_file_is_an_oserror_from_accumulate(tmp_path: Path) -> None:
    src = Source("x", pairs_file=str(tmp_path / "missing.jsonl"))
    with pytest.raises(OSError):
        accumulate(src, Policy())


@pytest.mark.parametrize("kind", ["class", "vector"])
def test_cli_switches_the_reader_when_the_policy_names_another_kind(
    tmp_path: Path, kind: str
) -> None:
    """`router analyze` starts reading with the numeric schema before it has read the policy;
    a policy naming class or vector predictions restarts the reader with the general one, and
    the report equals the in-memory one."""
    import json
    import subprocess
    import sys

    recs, outs = dataset(SynthSpec(n=1500, kind=kind, seed=37, challenger_shift=0.5))
    (tmp_path / "p.jsonl").write_bytes(_lines(recs))
    (tmp_path / "o.jsonl").write_bytes(_lines(outs))
    (tmp_path / "policy.yaml").write_text(f"policy:\n  prediction_kind: {kind}\n")
    p = subprocess.run(
        [sys.executable, "-m", "router", "analyze", "--experiment", "synth", "--pairs",
         str(tmp_path / "p.jsonl"), "--outcomes", str(tmp_path / "o.jsonl"), "--policy",
         str(tmp_path / "policy.yaml"), "--split", "0.5", "--format", "json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    got = without_time(json.loads(p.stdout))
    policy = Policy(prediction_kind=kind)  # type: ignore[arg-type]
    mem = without_time(build_report(recs, outs, experiment="synth", policy=policy, split=0.5))
    assert got["divergence"]["kind"] == kind
    assert got["counts"]["invalid_records"] == 0
    for key in ("divergence", "quality", "counts"):
        assert_close(got[key], mem[key], key)


def test_hash_sample_batches_and_old_pickles_agree() -> None:
    """Rows offered as columns (pending until a trim) sample as rows offered stacked, and a
    sample pickled before the pending parts existed (a stored rollup) loads and goes on."""
    from router.analysis.sketches import HashSample

    rng = np.random.default_rng(39)
    a, b = HashSample(50, 2), HashSample(50, 2)
    for _ in range(30):
        h = rng.integers(-(2**62), 2**62, 40)
        x, y = rng.random(40), rng.random(40)
        a.add_batch(h, np.column_stack([x, y]))
        b.add_columns(h, [x, y])
    assert np.array_equal(a.items(), b.items()) and a.seen == b.seen
    old = HashSample.__new__(HashSample)
    old.__setstate__({"k": 50, "width": 2, "hashes": b.hashes, "rows": b.rows, "seen": b.seen})
    h = rng.integers(-(2**62), 2**62, 40)
    old.add_columns(h, [np.ones(40), np.zeros(40)])
    b.add_columns(h, [np.ones(40), np.zeros(40)])
    assert np.array_equal(old.items(), b.items())


def test_status_classes_beyond_http_fold_as_before() -> None:
    """Status classes are counted by bincount while they are small; any other status (a
    negative or a huge one) takes the sort, with the same names and order."""
    recs, _ = dataset(SynthSpec(n=400, seed=40))
    statuses = [200, 503, 404, -1, 99_999, 123_456]
    for i, r in enumerate(recs[:50]):
        side = "champion" if r["served"] == "champion" else "challenger"
        r[side] = dict(r[side], status=statuses[i % len(statuses)])
    acc = Accumulator(Policy(), OutcomeIndex(), experiment="synth")
    acc.add(recs)
    both = acc.status_classes[0] + acc.status_classes[1]
    assert both["999xx"] == 8 and both["1234xx"] == 8 and both["none"] >= 8
    assert list(acc.status_classes[0]) == ["none", "2xx", "4xx", "5xx", "999xx", "1234xx"]


def test_pages_made_unstarted_read_nothing_until_iterated() -> None:
    """``Pages(start=False)`` (an archive's pages, read once the outcomes are in) pulls no
    chunk before it is iterated, and can be closed unread."""
    import time

    recs, _ = dataset(SynthSpec(n=200, seed=39))
    pulled: list[int] = []

    def chunks() -> Iterator[bytes]:
        for i in range(0, 200, 50):
            pulled.append(i)
            yield _lines(recs[i : i + 50])

    schema = record_schema(numeric=True, fields=False)
    unread = Pages(chunks(), schema, workers=2, start=False)
    unread.close()
    pages = Pages(chunks(), schema, workers=2, start=False)
    try:
        time.sleep(0.3)
        assert pulled == []
        assert [p.cols.height for p in pages] == [50] * 4
    finally:
        pages.close()


def test_prefold_on_parse_threads_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The outcome join and the reduced unit rows made on the parse threads
    (accumulate.prefold) give the report the folding thread gives alone, with what makes it
    fold a page itself: replayed and reused request ids (within a page and across pages),
    records without a unit, another experiment's records and records outside the window."""
    from router.analysis.accumulate import prefold

    policy = Policy(min_samples=100, primary_metric=PrimaryMetric(name="converted"))
    recs, outs = dataset(SynthSpec(n=6000, units=500, seed=41, conversion_uplift=0.05))
    recs = [dict(r) for r in recs]
    for i in range(0, len(recs), 97):
        recs[i]["unit"] = None
    extra = [dict(recs[10]), dict(recs[3000], ts=recs[3000]["ts"] + 1.0),  # replay, reuse
             dict(recs[20], experiment="other"), dict(recs[4500])]  # fmt: skip
    recs = [*recs[:2000], dict(recs[1500]), *recs[2000:], *extra]  # (a replay in its page)
    since, until = recs[100]["ts"], recs[-200]["ts"]
    used: list[bool] = []

    def counted(page: Any, outcomes: OutcomeIndex) -> Any:
        page = prefold(page, outcomes)
        used.append(page.pre is not None)
        return page

    def run(pre: bool) -> dict[str, Any]:
        oi = OutcomeIndex()
        oi.add_all(outs, "synth")
        oi.freeze()
        acc = Accumulator(policy, oi, experiment="synth", since=since, until=until)
        chunks = [_lines(recs[i : i + 700]) for i in range(0, len(recs), 700)]
        pages = Pages(iter(chunks), record_schema(numeric=True, fields=False), workers=2,
                      start=False)  # fmt: skip
        if pre:
            pages.after = lambda page: counted(page, oi)
        try:
            fold(acc, pages)
        finally:
            pages.close()
        assert acc.duplicates >= 2 and acc.conflicts >= 1 and acc.outside_window > 0
        return without_time(report_from(acc, experiment="synth", split=0.5))

    alone = run(pre=False)
    folded_with: list[bool] = []  # per page folded: whether the prefold was used
    fold_page = Accumulator._fold

    def spy(self: Accumulator, *args: Any) -> None:
        folded_with.append(len(args) > 3 and args[3] is not None)
        fold_page(self, *args)

    monkeypatch.setattr(Accumulator, "_fold", spy)
    assert_close(run(pre=True), alone)
    assert used and all(used)
    assert any(folded_with) and not all(folded_with)  # (both ways taken)
