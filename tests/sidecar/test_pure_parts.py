"""Pure parts of the sidecar: shadow guard, metrics merge across workers, live state."""

from __future__ import annotations

import os
from pathlib import Path

from router.config import GuardConfig
from router.metrics import Metrics, SnapshotStore, merge_snapshots, render_prometheus
from router.sidecar.control import ControlFile, LiveState, UpstreamPin
from router.sidecar.guard import ShadowGuard


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
