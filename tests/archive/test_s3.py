"""The archive on an S3-compatible object store (moto's server over HTTP): written exactly
once, rewritten idempotently, analysed like a directory; a missing bucket is a clear error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import redis
import yaml

from router.analysis.policy import load_policy
from router.analysis.reader import Source
from router.analysis.run import analyze
from router.archive.archiver import Archiver
from router.archive.scan import plan
from router.archive.store import ArchiveStore
from router.config import ArchiveConfig
from tests.archive.conftest import fill, s3_uri
from tests.archive.test_analyze import assert_same
from tests.helpers import ROOT


def _stream_ids(store: ArchiveStore, kind: str) -> list[str]:
    ids: list[str] = []
    for f in plan(store, kind, "e", None, None).files:
        ids += store.parquet(f.path).read(columns=["stream_id"]).column(0).to_pylist()
    return ids


def test_archive_to_s3_exactly_once_and_analyse_it(
    s3_server: dict[str, Any], redis_url: str, tmp_path: Path
) -> None:
    client = redis.Redis.from_url(redis_url)
    filled = fill(client, n=1500, step_ms=4000)
    uri = s3_uri(s3_server, "archive", f"{tmp_path.name}/root")
    store = ArchiveStore.open(uri)
    crashed = Archiver(client, store, "e", ArchiveConfig(consumer="a", read_count=500))
    crashed.discover()
    crashed.read_round()  # wrote its files to S3, then died before acknowledging
    for st in crashed.streams.values():
        crashed.writer.write(st.kind, st.key, st.ids, st.payloads)
    restarted = Archiver(client, ArchiveStore.open(uri), "e", ArchiveConfig(consumer="a"))
    totals = restarted.run(until_idle=True)
    assert totals.duplicates == crashed.buffered > 0
    ids = _stream_ids(store, "pairs")
    assert sorted(ids) == sorted(filled.pair_ids)
    assert len(_stream_ids(store, "outcomes")) == filled.outcomes
    # no temporary object on the store: objects appear whole, under their final names
    names = [f.path.rsplit("/", 1)[1] for f in plan(store, "pairs", "e", None, None).files]
    assert all(n.startswith("part-x-") and n.endswith(".parquet") for n in names)
    policy = load_policy(None)
    from_s3 = analyze(Source("e", archive=uri), policy)
    assert_same(analyze(Source("e", redis_url=redis_url), policy), from_s3)
    assert from_s3["archive"]["uri"].startswith("s3://archive/")


def test_a_missing_bucket_is_a_clear_error(s3_server: dict[str, Any], tmp_path: Path,
                                           redis_url: str) -> None:  # fmt: skip
    uri = s3_uri(s3_server, "no-such-bucket", "root")
    proc = subprocess.run([sys.executable, "-m", "router", "analyze", "--experiment", "e",
                           "--archive", uri], cwd=ROOT, capture_output=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 3
    assert b"bucket 'no-such-bucket' does not exist" in proc.stderr
    cfg = {
        "champion": {"url": "http://127.0.0.1:9", "version": "c1"},
        "challenger": {"url": "http://127.0.0.1:9", "version": "c2"},
        "experiment": {"name": "e", "salt": "s"},
        "capture": {"redis": redis_url},
        "archive": {"uri": uri},
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-m", "router", "archive", "-c",
                           str(tmp_path / "r.yaml"), "--until-idle"], cwd=ROOT,
                          capture_output=True, timeout=120)  # fmt: skip
    assert proc.returncode == 3
    assert b"router archive: archive s3://no-such-bucket/root: bucket" in proc.stderr
