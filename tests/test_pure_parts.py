"""Pure parts: records, contract diff, guard, metrics merge, outcome validation, live state."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from router.config import GuardConfig
from router.control import ControlFile, LiveState, UpstreamPin
from router.guard import ShadowGuard
from router.metrics import Metrics, SnapshotStore, merge_snapshots, render_prometheus
from router.outcomes import parse_outcomes
from router.records import (
    FinalizeOptions,
    PendingRecord,
    Side,
    contract_diff,
    finalize,
    lookup,
    unit_from_body,
)


@pytest.mark.parametrize(
    ("doc", "path", "expected"),
    [
        ({"score": 0.5}, "score", 0.5),
        ({"predictions": [0.1, 0.9]}, "predictions.1", 0.9),
        ({"a": {"b": {"c": "x"}}}, "a.b.c", "x"),
        ({"a": [1]}, "a.5", None),
        ({"a": 1}, "a.b", None),
        ([{"k": 3}], "0.k", 3),
    ],
)
def test_lookup(doc: Any, path: str, expected: Any) -> None:
    assert lookup(doc, path) == expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"user": {"id": "u1"}}', "u1"),
        (b'{"user": {"id": 42}}', "42"),
        (b'{"user": {"id": null}}', None),
        (b'{"user": {"id": {"x": 1}}}', None),
        (b"{broken", None),
        (b"", None),
    ],
)
def test_unit_from_body(body: bytes, expected: str | None) -> None:
    assert unit_from_body(body, "user.id") == expected


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ({"score": 1}, {"score": 2}, None),
        ({"score": 1}, {"score": "1"}, {"missing": [], "extra": [], "retyped": ["score"]}),
        ({"score": 1, "x": 1}, {"score": 1}, {"missing": ["x"], "extra": [], "retyped": []}),
        ({"p": [1, 2]}, {"p": [{"v": 1}]}, {"missing": [], "extra": ["p[].v"], "retyped": ["p[]"]}),
        ({"s": None}, {"s": 0.2}, {"missing": [], "extra": [], "retyped": ["s"]}),
    ],
)
def test_contract_diff(a: Any, b: Any, expected: Any) -> None:
    assert contract_diff(a, b) == expected


def _pending(**kw: Any) -> PendingRecord:
    base: dict[str, Any] = {
        "experiment": "e",
        "request_id": "r1",
        "ts": 1.5,
        "unit": "u",
        "bucket": 12,
        "served": "champion",
        "mirrored": True,
        "champion": Side("v1", 200, 3.0, b'{"score": 0.2, "label": 0}'),
        "challenger": Side("v2", 200, 4.0, b'{"score": 0.3}'),
        "request_body": b'{"user": {"id": "u", "email": "a@b.c"}, "amount": 3}',
    }
    base.update(kw)
    return PendingRecord(**base)


def test_finalize_follows_the_record_schema() -> None:
    rec = finalize(_pending(), FinalizeOptions(prediction_path="score"))
    assert set(rec) == {
        "v", "experiment", "request_id", "ts", "unit", "bucket", "served", "mirrored",
        "segment", "champion", "challenger", "contract",
    }  # fmt: skip
    assert rec["champion"] == {
        "version": "v1", "status": 200, "latency_ms": 3.0, "prediction": 0.2, "error": None
    }  # fmt: skip
    assert rec["challenger"]["prediction"] == 0.3
    assert rec["contract"] == {"missing": ["label"], "extra": [], "retyped": []}
    orjson.dumps(rec)


def test_finalize_unmirrored_side_is_null_and_body_not_kept_by_default() -> None:
    rec = finalize(_pending(mirrored=False, challenger=None), FinalizeOptions())
    assert rec["challenger"] is None and rec["contract"] is None and "fields" not in rec


def test_captured_fields_with_redaction() -> None:
    opts = FinalizeOptions(fields=("amount",), hash_fields=("user.email",), hash_salt="s")
    rec = finalize(_pending(), opts)
    assert rec["fields"]["amount"] == 3
    hashed = rec["fields"]["user.email"]
    assert hashed.startswith("sha256:") and "a@b.c" not in orjson.dumps(rec).decode()


def test_guard_trips_on_errors_and_recovers() -> None:
    g = ShadowGuard(GuardConfig(window_s=5, min_requests=10, max_error_rate=0.2, recover_after_s=2))
    t = 1000.0
    for i in range(20):
        g.observe(t + i * 0.01, 0.005, error=i % 2 == 0)
    change = g.evaluate(t + 0.5)
    assert change is not None and change.throttled and "error rate" in change.reason
    assert g.mirror_factor() == 0.0
    # healthy traffic later: stays throttled until healthy for recover_after_s
    for i in range(50):
        g.observe(t + 10 + i * 0.01, 0.005, error=False)
    assert g.evaluate(t + 10.6) is None and g.throttled
    assert g.evaluate(t + 12.7) is not None and not g.throttled


def test_guard_trips_on_p99_and_needs_min_requests() -> None:
    g = ShadowGuard(GuardConfig(window_s=5, min_requests=30, max_p99_ms=100, max_error_rate=None))
    for i in range(20):
        g.observe(50.0 + i * 0.01, 0.5, error=False)
    assert g.evaluate(50.5) is None  # 20 < min_requests
    for i in range(20):
        g.observe(50.3 + i * 0.01, 0.5, error=False)
    change = g.evaluate(50.6)
    assert change is not None and change.throttled and "p99" in change.reason


def test_metrics_merge_across_processes(tmp_path: Path) -> None:
    a, b = Metrics(), Metrics()
    a.inc("router_requests", ("champion", "2xx"), 3)
    b.inc("router_requests", ("champion", "2xx"), 4)
    a.observe("router_request_duration_seconds", 0.002)
    b.observe("router_request_duration_seconds", 0.2)
    a.set("router_in_flight_requests", 2)
    snap_b = b.snapshot()
    snap_b["pid"] = 2**22 + 12345  # a dead worker: counters kept, gauges dropped
    snap_b["gauges"] = [["router_in_flight_requests", [], 5.0]]
    merged = merge_snapshots([a.snapshot(), snap_b])
    text = render_prometheus(merged).decode()
    assert 'router_requests_total{status_class="2xx",variant="champion"} 7.0' in text
    assert "router_request_duration_seconds_count 2.0" in text
    assert "router_in_flight_requests 2.0" in text
    store = SnapshotStore(tmp_path)
    store.write(a)
    assert store.read_all()[0]["pid"] == os.getpid()


def test_outcome_validation_table() -> None:
    raw = b"\n".join(
        [
            b'{"request_id": "r", "metric": "m", "value": 1}',
            b'{"unit": 7, "metric": "m", "value": true}',
            b'{"metric": "m", "value": 1}',
            b'{"request_id": "r", "metric": "", "value": 1}',
            b'{"request_id": "r", "metric": "m", "value": 1, "oops": 1}',
            b'{"request_id": "r", "metric": "m", "value": 1, "v": 2}',
            b"[1",
        ]
    )
    ok, bad = parse_outcomes(raw, "exp")
    assert [r["experiment"] for r in ok] == ["exp", "exp"]
    assert ok[1]["unit"] == "7" and ok[1]["value"] == 1.0
    reasons = dict(bad)
    assert set(reasons) == {3, 4, 5, 6, 7}
    assert "request_id or unit" in reasons[3]
    assert "metric" in reasons[4] and "unknown" in reasons[5] and "version" in reasons[6]
    assert "invalid JSON" in reasons[7]


def test_control_file_versions_and_change_detection(tmp_path: Path) -> None:
    cf = ControlFile(tmp_path)
    pins = UpstreamPin("http://a", "1"), UpstreamPin("http://b", "2")
    cf.initialise(LiveState(1, 0.0, 0.5, *pins))
    other = ControlFile(tmp_path)
    assert other.changed() is True and other.changed() is False
    new = cf.update(by="test", split=0.25)
    assert new.version == 2 and new.split == 0.25 and new.mirror == 0.5
    assert other.changed() is True
    state = other.read()
    assert state is not None and state.split == 0.25 and state.updated_by == "test"
