"""`--executor dask://…`: partition folds on a real dask.distributed LocalCluster (worker
processes) give the report of the single-process analysis."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from router.analysis.policy import load_policy
from router.analysis.reader import Source
from router.analysis.run import analyze
from router.archive.archiver import Archiver
from router.archive.store import ArchiveStore
from router.config import ArchiveConfig
from router.netutil import free_port
from tests.archive.conftest import BAD_ENTRIES, fill
from tests.archive.test_abn import POLICY, SHARES, assert_abn, write_abn_archive
from tests.archive.test_analyze import assert_same
from tests.helpers import ROOT


@pytest.fixture(scope="module")
def dask_address() -> Iterator[str]:
    """A real dask.distributed LocalCluster (two worker processes) for the module's tests."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:  # fmt: skip
        yield cluster.scheduler_address


def test_dask_cluster_report_equals_the_local_one(
    redis_url: str, tmp_path: Path, dask_address: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    fill(client, n=3000, step_ms=3000, extra=BAD_ENTRIES)
    root = tmp_path / "archive"
    Archiver(client, ArchiveStore.open(str(root)), "e",
             ArchiveConfig(max_buffer_records=400)).run(until_idle=True)  # fmt: skip
    policy = load_policy(None)
    local = analyze(Source("e", archive=str(root)), policy)
    address = dask_address
    on_dask = analyze(Source("e", archive=str(root)), policy, executor=address, workers=2)
    proc = subprocess.run(
        [sys.executable, "-m", "router", "analyze", "--experiment", "e", "--archive",
         str(root), "--executor", address.replace("tcp://", "dask://"), "--format", "md"],
        cwd=ROOT, capture_output=True, timeout=120,
    )  # fmt: skip
    assert_same(local, on_dask)
    assert on_dask["archive"]["tasks"] > 1 and on_dask["archive"]["executor"] == address
    assert on_dask["data_quality"]["records"]["invalid"] == len(BAD_ENTRIES)
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"# Shadow report: e" in proc.stdout


def test_dask_cluster_gives_every_challengers_view(
    redis_url: str, tmp_path: Path, dask_address: str
) -> None:
    """A/B/n on the cluster: a challenger named only in later tasks (every task folded again
    with the agreed views), or given by --shares (folded once); the JSONL report each time."""
    import json

    root, jsonl = write_abn_archive(redis_url, tmp_path)
    for shares in (SHARES, None):
        ref = analyze(jsonl, POLICY, shares=shares)
        rep = analyze(Source("e", archive=str(root)), POLICY, executor=dask_address, workers=2,
                      shares=shares)  # fmt: skip
        assert rep["archive"]["executor"] == dask_address and rep["archive"]["tasks"] > 1
        assert_abn(rep, ref)
    policy_file = tmp_path / "policy.json"
    policy_file.write_text(json.dumps({"primary_metric": {"name": "conversion"},
                                       "min_samples": 10}))  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "router", "analyze", "--experiment", "e", "--archive", str(root),
         "--executor", dask_address.replace("tcp://", "dask://"), "--policy", str(policy_file),
         "--format", "json"],
        cwd=ROOT, capture_output=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode()
    assert_abn(json.loads(proc.stdout), analyze(jsonl, POLICY))


def test_an_unreachable_scheduler_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "archive").mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "router", "analyze", "--experiment", "e", "--archive",
         str(tmp_path / "archive"), "--executor", f"dask://127.0.0.1:{free_port()}"],
        cwd=ROOT, capture_output=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr.decode()
    assert b"scheduler unreachable" in proc.stderr
