"""`router archive`: config checks, exit codes, the metrics endpoint."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from router.archive.metrics_http import serve_metrics
from router.config import ConfigError, parse_config
from router.metrics import Metrics
from router.netutil import free_port
from tests.helpers import ROOT

BASE: dict[str, Any] = {
    "champion": {"url": "http://127.0.0.1:9", "version": "c1"},
    "challenger": {"url": "http://127.0.0.1:9", "version": "c2"},
    "experiment": {"name": "e", "salt": "s"},
}


@pytest.mark.parametrize(
    "archive, message",
    [({"claim_idle_s": 60, "flush_interval_s": 60}, "claim_idle_s must be more than twice"),
     ({"retention_days": 0}, "archive.retention_days: Input should be greater than 0"),
     ({"compression": "brotli"}, "archive.compression"),
     ({"bucket": "x"}, "archive.bucket: unknown key"),
     ({"metrics_listen": "nope"}, "archive")],
)  # fmt: skip
def test_bad_archive_config_names_the_key(archive: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({**BASE, "archive": archive}, "r.yaml")


def _archive(tmp_path: Path, cfg: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return subprocess.run([sys.executable, "-m", "router", "archive", "-c", str(path), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip


def test_exit_codes(tmp_path: Path, redis_url: str) -> None:
    bad = _archive(tmp_path, {**BASE, "archive": {"claim_idle_s": 1, "flush_interval_s": 1}})
    assert bad.returncode == 2 and "invalid config" in bad.stderr
    nowhere = f"redis://127.0.0.1:{free_port()}"
    archive = {"uri": str(tmp_path / "a")}
    down = _archive(tmp_path, {**BASE, "capture": {"redis": nowhere}, "archive": archive},
                    "--until-idle")
    assert down.returncode == 3 and "Redis unreachable" in down.stderr
    embedded = _archive(tmp_path, {**BASE, "capture": {"data_dir": str(tmp_path / "d")}})
    assert embedded.returncode == 2 and "embedded Redis" in embedded.stderr
    ok = _archive(tmp_path, {**BASE, "capture": {"redis": redis_url},
                             "archive": {"uri": str(tmp_path / "a")}}, "--until-idle")  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "router archive: 0 records, 0 outcomes in 0 files" in ok.stderr


def test_metrics_endpoint() -> None:
    m = Metrics()
    m.inc("router_archive_records", ("pairs",), 5)
    m.set("router_archive_lag_seconds", 2.5, ("e:pairs",))
    port = free_port()
    server = serve_metrics(f"127.0.0.1:{port}", m)
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        assert b'router_archive_records_total{kind="pairs"} 5.0' in body
        assert b'router_archive_lag_seconds{stream="e:pairs"} 2.5' in body
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=5)
    finally:
        server.shutdown()
