"""`--executor dask://…`: partition folds on a real dask.distributed LocalCluster (worker
processes) give the report of the single-process analysis."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import redis

from router.analysis.policy import load_policy
from router.analysis.reader import Source
from router.analysis.run import analyze
from router.archive.archiver import Archiver
from router.archive.store import ArchiveStore
from router.config import ArchiveConfig
from router.netutil import free_port
from tests.archive.conftest import BAD_ENTRIES, fill
from tests.archive.test_analyze import assert_same
from tests.helpers import ROOT


def test_dask_cluster_report_equals_the_local_one(redis_url: str, tmp_path: Path) -> None:
    from distributed import LocalCluster

    client = redis.Redis.from_url(redis_url)
    fill(client, n=3000, step_ms=3000, extra=BAD_ENTRIES)
    root = tmp_path / "archive"
    Archiver(client, ArchiveStore.open(str(root)), "e",
             ArchiveConfig(max_buffer_records=400)).run(until_idle=True)  # fmt: skip
    policy = load_policy(None)
    local = analyze(Source("e", archive=str(root)), policy)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:  # fmt: skip
        address = cluster.scheduler_address
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


def test_an_unreachable_scheduler_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "archive").mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "router", "analyze", "--experiment", "e", "--archive",
         str(tmp_path / "archive"), "--executor", f"dask://127.0.0.1:{free_port()}"],
        cwd=ROOT, capture_output=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr.decode()
    assert b"scheduler unreachable" in proc.stderr
