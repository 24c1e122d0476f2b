"""`router archive` SIGKILLed at several points while records stream in: after restarts,
every stream entry is in the archive exactly once (read back with DuckDB)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import orjson
import redis
import yaml

from tests.helpers import ROOT


def _config(tmp: Path, redis_url: str, consumer: str) -> Path:
    cfg = {
        "champion": {"url": "http://127.0.0.1:9", "version": "c1"},
        "challenger": {"url": "http://127.0.0.1:9", "version": "c2"},
        "experiment": {"name": "e", "salt": "s"},
        "capture": {"redis": redis_url, "data_dir": str(tmp / "data")},
        "archive": {"uri": str(tmp / "archive"), "consumer": consumer, "read_count": 100,
                    "max_buffer_records": 200, "flush_interval_s": 0.1, "claim_idle_s": 0.5},
    }  # fmt: skip
    path = tmp / f"router-{consumer}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _start(cfg: Path, *extra: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "router", "archive", "-c", str(cfg), *extra],
                            cwd=ROOT, env=env, stderr=subprocess.PIPE)  # fmt: skip


def _wait_ready(p: subprocess.Popen[bytes]) -> None:
    assert p.stderr is not None
    deadline = time.time() + 30
    while time.time() < deadline:
        line = p.stderr.readline()
        if b"archive: e ->" in line:
            threading.Thread(target=p.stderr.read, daemon=True).start()  # drain the rest
            return
        if not line and p.poll() is not None:
            raise AssertionError(f"router archive exited with {p.returncode}")
    raise AssertionError("router archive did not start")


def test_sigkill_at_any_point_neither_loses_nor_duplicates(redis_url: str, tmp_path: Path) -> None:
    client = redis.Redis.from_url(redis_url)
    stop = threading.Event()
    written: list[int] = [0]

    def feed() -> None:  # ~2,000 records/s, with outcomes
        i = 0
        while not stop.is_set():
            pipe = client.pipeline()
            for _ in range(40):
                side = {"version": "c1", "status": 200, "latency_ms": 1.0, "prediction": 0.5,
                        "error": None}  # fmt: skip
                rec = {"v": 1, "experiment": "e", "request_id": f"r{i}", "ts": time.time(),
                       "unit": f"u{i % 97}", "bucket": i % 10000, "served": "champion",
                       "mirrored": False, "segment": {}, "contract": None, "champion": side,
                       "challenger": None}  # fmt: skip
                pipe.xadd("e:pairs", {"r": orjson.dumps(rec)})
                if i % 5 == 0:
                    pipe.xadd("e:outcomes", {"r": orjson.dumps(
                        {"v": 1, "experiment": "e", "request_id": f"r{i}", "metric": "m",
                         "value": 1.0, "ts": time.time()})})  # fmt: skip
                i += 1
            pipe.execute()
            written[0] = i
            time.sleep(0.02)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    kills = 0
    try:
        # alternate two archiver names: a restart under the same name re-reads its own
        # pending entries; under the other name it takes them over after claim_idle_s
        for n, delay in enumerate((0.05, 0.2, 0.35, 0.5, 0.8, 1.2)):
            p = _start(_config(tmp_path, redis_url, "ab"[n % 2]))
            _wait_ready(p)
            time.sleep(delay)
            p.send_signal(signal.SIGKILL)
            p.wait(timeout=10)
            kills += 1
    finally:
        stop.set()
        feeder.join(timeout=10)
    assert kills == 6 and written[0] > 1000
    time.sleep(0.6)  # both names' pending entries are now claimable
    final = _start(_config(tmp_path, redis_url, "final"), "--until-idle")
    _, err = final.communicate(timeout=120)
    assert final.returncode == 0, err.decode()
    for kind in ("pairs", "outcomes"):
        stream = [i.decode() for i, _f in client.xrange(f"e:{kind}")]
        glob = f"{tmp_path}/archive/{kind}/**/*.parquet"
        got = [r[0] for r in duckdb.sql(f"SELECT stream_id FROM read_parquet('{glob}')"
                                         ).fetchall()]  # fmt: skip
        assert len(got) == len(set(got)), f"{kind}: {len(got) - len(set(got))} duplicates"
        assert set(got) == set(stream), f"{kind}: {len(set(stream) - set(got))} missing"
        info = client.xinfo_groups(f"e:{kind}")
        assert info[0]["pending"] == 0
