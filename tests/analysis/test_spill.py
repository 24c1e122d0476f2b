"""Request-id sets past their spill threshold (runs on disk, fence index in RAM): the same
answers as in RAM, pickled with their ids, their files removed with them, and the same dedupe."""

from __future__ import annotations

import gc
import os
import pickle
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.analysis import Policy, sketches
from router.analysis.accumulate import Accumulator
from router.analysis.outcomes_index import OutcomeIndex
from router.analysis.report import report_from
from router.analysis.sketches import IdSet, LazyIdSet
from router.demo.synth import SynthSpec, dataset

from .test_report import without_time

ids64 = st.integers(-(2**63), 2**63 - 1)
batches = st.lists(st.lists(st.one_of(ids64, st.integers(-40, 40)), max_size=120), max_size=25)


def _fill(batches: list[list[int]], presorted: bool) -> tuple[IdSet, LazyIdSet, list[bool]]:
    """Feed batches as the accumulator does (query, then add the new ones); the answers."""
    ids, content, answers = IdSet(), LazyIdSet(), []
    for b in batches:
        batch = np.unique(np.array(b, dtype=np.int64))
        q = batch if presorted else np.random.default_rng(len(b)).permutation(batch)
        seen = ids.contains(q, presorted=presorted)
        assert (content.contains(q) == seen).all()
        answers.extend(seen.tolist())
        ids.add_new(q[~seen], presorted=presorted)
        content.add_new(q[~seen])
    return ids, content, answers


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batches=batches, presorted=st.booleans(), spill=st.sampled_from([1, 7, 64, 500]))
def test_spilled_sets_answer_as_in_ram(monkeypatch: pytest.MonkeyPatch, batches: list[list[int]],
                                       presorted: bool, spill: int) -> None:  # fmt: skip
    ram, ram_content, want = _fill(batches, presorted)
    with monkeypatch.context() as m:
        m.setattr(sketches, "SPILL_AT", spill)
        m.setattr(sketches, "PENDING_SPILL_AT", spill)
        m.setattr(sketches, "FENCE", 4)
        ids, content, got = _fill(batches, presorted)
        assert got == want
        assert ids.values().tolist() == ram.values().tolist()
        assert len(ids) == len(ram) and len(content) == len(ram_content)
        probe = np.unique(np.array([x for b in batches for x in b] + [0, 1, -1], dtype=np.int64))
        assert ids.contains(probe).tolist() == ram.contains(probe).tolist()
        assert content.contains(probe).tolist() == ram_content.contains(probe).tolist()
        back = pickle.loads(pickle.dumps(ids))
        assert back.values().tolist() == ram.values().tolist()


def test_spilled_sets_pickle_merge_and_remove_their_files(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sketches, "SPILL_AT", 300)
    monkeypatch.setattr(sketches, "PENDING_SPILL_AT", 300)
    rng = np.random.default_rng(5)
    pool = np.unique(rng.integers(-(2**63), 2**63 - 1, 5000, dtype=np.int64))
    a, b = IdSet(), IdSet()
    ca, cb = LazyIdSet(), LazyIdSet()
    for s, c, part in ((a, ca, pool[:3000]), (b, cb, pool[2000:])):
        for i in range(0, part.size, 400):
            s.add_new(part[i : i + 400], presorted=True)
            c.add_new(rng.permutation(part[i : i + 400]))
    dirs = [a.spill_dir, b.spill_dir, ca.spill_dir, cb.spill_dir]
    assert all(d is not None and os.listdir(d) for d in dirs)
    assert a.disk and not ca._set.runs  # (on disk, unsorted until queried)
    # pickled: the ids travel, not the files (read back; spilled again on the other side)
    a2, ca2 = pickle.loads(pickle.dumps(a)), pickle.loads(pickle.dumps(ca))
    assert a2.spill_dir not in dirs and a2.values().tolist() == pool[:3000].tolist()
    assert len(ca2) == 3000 and ca2._pending and ca2.spill_dir not in dirs
    a2.merge(b)
    ca2.merge(cb)
    assert a2.compact() == 1000 and a2.values().tolist() == pool.tolist()
    assert ca2.contains(pool).all() and len(ca2) == pool.size
    absent = rng.integers(-(2**63), 2**63 - 1, 500, dtype=np.int64)
    absent = absent[~np.isin(absent, pool)]
    assert not a2.contains(absent).any() and not ca2.contains(absent).any()
    dirs += [a2.spill_dir, ca2.spill_dir]
    del a, b, ca, cb, a2, ca2, s, c  # (the loop held the last two)
    gc.collect()
    assert not any(os.path.exists(d) for d in dirs if d)


def _fold(recs: list[dict[str, object]], outs: list[dict[str, object]]) -> Accumulator:
    oi = OutcomeIndex()
    oi.add_all(outs)
    acc = Accumulator(Policy(), oi, experiment="synth")
    for i in range(0, len(recs), 150):  # pages: repeats across them meet the spilled runs
        acc.add(recs[i : i + 150])
    return acc


def test_dedupe_is_the_same_with_a_tiny_spill_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    recs, outs = dataset(SynthSpec(n=1500, seed=7))
    reused = [dict(r, request_id=recs[i * 7]["request_id"]) for i, r in enumerate(recs[900:960])]
    replayed = recs[100:140] + recs[1200:1210]
    data = recs[:1000] + replayed + reused + recs[1000:] + recs[300:305]
    ram = _fold(data, outs)
    monkeypatch.setattr(sketches, "SPILL_AT", 16)
    monkeypatch.setattr(sketches, "PENDING_SPILL_AT", 40)
    monkeypatch.setattr(sketches, "FENCE", 8)
    spilled = _fold(data, outs)
    assert spilled.seen.disk and spilled.seen_content.spill_dir is not None
    assert (ram.duplicates, ram.conflicts) == (spilled.duplicates, spilled.conflicts)
    assert ram.duplicates >= 50 and ram.conflicts >= 50
    assert ram.conflict_examples == spilled.conflict_examples
    assert without_time(report_from(ram, experiment="synth")) == without_time(
        report_from(spilled, experiment="synth")
    )


def test_sets_stay_in_ram_when_the_temporary_directory_fails(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(sketches, "SPILL_AT", 50)
    monkeypatch.setattr(sketches, "PENDING_SPILL_AT", 50)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))
    rng = np.random.default_rng(9)
    pool = np.unique(rng.integers(-(2**63), 2**63 - 1, 1000, dtype=np.int64))
    ids, content = IdSet(), LazyIdSet()
    for i in range(0, pool.size, 100):
        ids.add_new(pool[i : i + 100], presorted=True)
        content.add_new(pool[i : i + 100])
    assert ids.spill_dir is None and content.spill_dir is None and not ids.disk
    assert ids.contains(pool).all() and content.contains(pool).all()
    assert len(ids) == len(content) == pool.size


_KILLED = """
import os, signal, sys
import numpy as np
from router.analysis import sketches
sketches.SPILL_AT = 300
ids = sketches.IdSet()
ids.add_new(np.arange(0, 400, dtype=np.int64), presorted=True)
print(ids.spill_dir, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_processs_spill_directory_is_removed_by_the_next_spill(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A process killed while its sets had runs on disk (SIGKILL, the OOM killer: no
    finaliser runs) leaves its spill directory; the next set that spills removes it (its
    owner's lock is free), and never the directory of a set still alive."""
    import subprocess
    import sys

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)  # (gettempdir reads TMPDIR again)
    monkeypatch.setattr(sketches, "SPILL_AT", 300)
    live = IdSet()
    live.add_new(np.arange(10_000, 10_400, dtype=np.int64), presorted=True)
    assert live.spill_dir is not None and live.spill_dir.startswith(str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", _KILLED], capture_output=True, text=True,
                          env={**os.environ, "TMPDIR": str(tmp_path)}, timeout=60)  # fmt: skip
    assert proc.returncode == -9, proc.stderr
    dead = proc.stdout.strip()
    assert dead.startswith(str(tmp_path)) and os.listdir(dead)
    before = sketches.SPILLED.get("swept", 0)
    fresh = IdSet()
    fresh.add_new(np.arange(20_000, 20_400, dtype=np.int64), presorted=True)
    assert fresh.spill_dir is not None
    assert not os.path.exists(dead)
    assert sketches.SPILLED["swept"] == before + 1
    assert os.path.exists(live.spill_dir) and live.contains(np.array([10_005])).all()
    assert sorted(os.listdir(tmp_path)) == sorted(
        os.path.basename(d) for d in (live.spill_dir, fresh.spill_dir)
    )
