"""`router export`: JSONL and CSV round trips, time windows (unix and ISO-8601), outcomes."""

from __future__ import annotations

import csv
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from router.capture.reader import parse_time
from router.cli import main
from tests.helpers import ROOT


def _rec(i: int) -> dict[str, Any]:
    return {
        "v": 1, "experiment": "t", "request_id": f"r{i:04d}", "ts": 1700000000.25 + i,
        "unit": f"u{i % 7}", "bucket": i * 37 % 10000, "served": "champion",
        "mirrored": i % 2 == 0, "segment": {"country": "de" if i % 3 else "fr"},
        "champion": {"version": "c1", "status": 200, "latency_ms": 1.5 + i, "prediction": 0.25,
                     "error": None},
        "challenger": None if i % 2 else {"version": "c2", "status": 200, "latency_ms": 2.0,
                                          "prediction": [0.1, 0.9], "error": None},
        "contract": {"missing": ["a.b"], "extra": [], "retyped": []} if i == 4 else None,
    }  # fmt: skip


def _fill(url: str, n: int, start: int = 0) -> list[dict[str, Any]]:
    c = redis.Redis.from_url(url)
    docs = [_rec(i) for i in range(start, start + n)]
    for d in docs:
        c.xadd("t:pairs", {"r": orjson.dumps(d)})
    c.close()
    return docs


def test_parse_time_accepts_unix_seconds_and_iso8601() -> None:
    assert parse_time("1700000000") == 1700000000.0
    assert parse_time("1700000000.5") == 1700000000.5
    assert parse_time("2023-11-14T22:13:20Z") == 1700000000.0
    assert parse_time("2023-11-14T23:13:20+01:00") == 1700000000.0
    assert parse_time("2023-11-14 22:13:20") == 1700000000.0  # no zone: UTC
    assert parse_time(None) is None
    with pytest.raises(ValueError):
        parse_time("yesterday")


def test_jsonl_round_trip_and_time_window(redis_url: str, tmp_path: Path) -> None:
    first = _fill(redis_url, 30)
    time.sleep(0.05)
    cut = time.time()
    time.sleep(0.05)
    second = _fill(redis_url, 20, start=30)
    out = tmp_path / "all.jsonl"
    assert main(["export", "--experiment", "t", "--redis", redis_url, "-o", str(out)]) == 0
    assert [orjson.loads(x) for x in out.read_bytes().splitlines()] == first + second

    iso = datetime.fromtimestamp(cut, UTC).isoformat()
    assert main(["export", "--experiment", "t", "--redis", redis_url, "--since", iso,
                 "-o", str(tmp_path / "late.jsonl")]) == 0  # fmt: skip
    late = [orjson.loads(x) for x in (tmp_path / "late.jsonl").read_bytes().splitlines()]
    assert late == second
    assert main(["export", "--experiment", "t", "--redis", redis_url, "--until", f"{cut:.3f}",
                 "-o", str(tmp_path / "early.jsonl")]) == 0  # fmt: skip
    early = [orjson.loads(x) for x in (tmp_path / "early.jsonl").read_bytes().splitlines()]
    assert early == first


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return orjson.dumps(v).decode()
    return str(v)


def test_csv_has_flattened_columns_and_round_trips(redis_url: str, tmp_path: Path) -> None:
    docs = _fill(redis_url, 12)
    out = tmp_path / "pairs.csv"
    proc = subprocess.run(  # the real command line, as a user runs it
        [sys.executable, "-m", "router", "export", "--experiment", "t", "--redis", redis_url,
         "-o", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "12 records" in proc.stderr and "\r" not in proc.stderr  # no progress bar off a tty
    with open(out, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        header = reader.fieldnames or []
    assert header[:5] == ["v", "experiment", "request_id", "ts", "unit"]
    assert "champion.latency_ms" in header and "challenger.prediction" in header
    assert "segment.country" in header and "contract.missing" in header
    assert len(rows) == len(docs)
    for row, doc in zip(rows, docs, strict=True):
        assert row["request_id"] == doc["request_id"]
        assert float(row["ts"]) == doc["ts"]
        assert float(row["champion.latency_ms"]) == doc["champion"]["latency_ms"]
        assert row["segment.country"] == doc["segment"]["country"]
        assert row["mirrored"] == _cell(doc["mirrored"])
        chall = doc["challenger"] or {}
        assert row["challenger.prediction"] == _cell(chall.get("prediction"))
        contract = doc["contract"] or {}
        assert row["contract.missing"] == _cell(contract.get("missing"))


def test_outcomes_export_and_bad_arguments(redis_url: str, tmp_path: Path) -> None:
    c = redis.Redis.from_url(redis_url)
    rows = [{"v": 1, "experiment": "t", "request_id": f"r{i}", "unit": None, "metric": "click",
             "value": float(i % 2), "ts": 1700000000.0 + i} for i in range(5)]  # fmt: skip
    for r in rows:
        c.xadd("t:outcomes", {"r": orjson.dumps(r)})
    c.close()
    out = tmp_path / "o.csv"
    assert main(["export", "--experiment", "t", "--redis", redis_url, "--outcomes",
                 "-o", str(out)]) == 0  # fmt: skip
    with open(out, newline="") as f:
        got = list(csv.DictReader(f))
    assert [g["request_id"] for g in got] == [r["request_id"] for r in rows]
    assert list(got[0]) == ["v", "experiment", "request_id", "unit", "metric", "value", "ts"]
    assert main(["export", "--experiment", "t", "--redis", redis_url, "--since", "soon",
                 "-o", str(out)]) == 2  # fmt: skip
