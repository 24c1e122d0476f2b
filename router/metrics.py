"""Metrics: cheap on the hot path, aggregated across worker processes.

The hot path only bumps plain Python dict entries and histogram bucket lists (no locks, no mmap
writes). Each worker writes a snapshot of its values to ``<metrics_dir>/worker-<pid>.json`` every
``SNAPSHOT_INTERVAL`` seconds (and on exit), so another worker's values lag by at most that.
``GET /metrics`` on any worker merges every worker's
snapshot (its own taken live) through a ``prometheus_client`` collector and renders the standard
text format, so the numbers are the whole router's, not one worker's. Counters of exited workers
are kept (so totals stay monotonic); gauges of exited workers are dropped.

Names follow Prometheus conventions: ``router_requests_total{variant=…, status_class=…}``, seconds
as the unit, histograms for latency. The catalogue is :data:`CATALOGUE` (also in README.md).

A foundation module (it imports nothing of the router): the sidecar and capture both count
through it, and the sidecar owns the ``/metrics`` endpoint. It stays outside
:mod:`router.sidecar` because capture may not import the sidecar.
"""

from __future__ import annotations

import contextlib
import os
import time
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry

SNAPSHOT_INTERVAL = 0.25

LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.075,
    0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class MetricDef:
    kind: str  # counter | gauge | histogram
    help: str
    labels: tuple[str, ...] = ()


CATALOGUE: dict[str, MetricDef] = {
    "router_requests": MetricDef(
        "counter",
        "Proxied requests by served variant and status class",
        ("variant", "status_class"),
    ),
    "router_request_duration_seconds": MetricDef(
        "histogram", "Total time from request received to response ready"
    ),
    "router_upstream_latency_seconds": MetricDef(
        "histogram", "Upstream exchange latency by variant and role", ("variant", "role")
    ),
    "router_upstream_ttfb_seconds": MetricDef(
        "histogram",
        "Time from the upstream call to the first body byte, by variant and role",
        ("variant", "role"),
    ),
    "router_streams": MetricDef(
        "counter",
        "Streamed upstream answers by variant, role and how they ended (complete, "
        "upstream_error, client_aborted, fallback, shutdown)",
        ("variant", "role", "outcome"),
    ),
    "router_stream_events": MetricDef(
        "counter", "Server-sent events passed through or consumed, by variant and role",
        ("variant", "role"),
    ),
    "router_stream_bytes": MetricDef(
        "counter", "Body bytes of streamed answers, by variant and role", ("variant", "role")
    ),
    "router_capture_truncated": MetricDef(
        "counter", "Served streamed answers longer than capture.max_response_bytes (the record "
        "keeps the first bytes)", ("variant",),
    ),
    "router_in_flight_requests": MetricDef("gauge", "Requests being handled right now"),
    "router_event_loop_lag_seconds": MetricDef(
        "histogram", "How late a 100 ms timer fires: time the event loop was blocked"
    ),
    "router_upstream_errors": MetricDef(
        "counter",
        "Failed upstream exchanges by variant, role and kind",
        ("variant", "role", "kind"),
    ),
    "router_rejected_requests": MetricDef(
        "counter", "Requests and connections refused by the router itself", ("reason",)
    ),
    "router_request_ids_replaced": MetricDef(
        "counter", "Client X-Request-Id values replaced by a generated id", ("reason",)
    ),
    "router_trailers_dropped": MetricDef(
        "counter", "Trailer fields dropped (never merged into headers)", ("direction",)
    ),
    "router_connections_closed": MetricDef(
        "counter", "Client connections closed by the router (timeouts)", ("reason",)
    ),
    "router_write_paused": MetricDef(
        "counter", "Times a client's write buffer passed its high-water mark (reading paused)"
    ),
    "router_open_connections": MetricDef("gauge", "Open client connections (summed)"),
    "router_assignment_fallbacks": MetricDef(
        "counter", "Requests whose unit was missing and fell back to the request id", ("reason",)
    ),
    "router_challenger_fallbacks": MetricDef(
        "counter", "Challenger-served requests retried on the champion", ("reason",)
    ),
    "router_shadow_dispatched": MetricDef("counter", "Shadow requests queued", ("variant",)),
    "router_shadow_completed": MetricDef("counter", "Shadow requests answered", ("variant",)),
    "router_shadow_dropped": MetricDef(
        "counter",
        "Shadow requests not sent (queue_full, body_too_large, shutdown, budget: cut by unit "
        "hash to keep within mirror_max_rps, budget_burst: cut by the budget's token bucket)",
        ("reason",),
    ),
    "router_shadow_budget_factor": MetricDef(
        "gauge", "Share of a shadow target's mirror units kept by its budget (1: no cut)",
        ("target",),
    ),
    "router_forced_requests": MetricDef(
        "counter",
        "Requests with the force header: honoured, rejected (no valid token and unit not "
        "allowed: header stripped), unknown_variant (400)",
        ("outcome",),
    ),
    "router_admin_changes": MetricDef(
        "counter", "Live challenger changes through the admin API (applied, rejected)",
        ("outcome",),
    ),
    "router_experiment_expired": MetricDef(
        "counter", "Times the experiment expired and traffic returned to the champion"
    ),
    "router_shadow_failed": MetricDef(
        "counter", "Shadow requests that failed (connect, timeout, protocol)", ("kind",)
    ),
    "router_shadow_truncated": MetricDef(
        "counter", "Shadow answers larger than limits.shadow_max_response_bytes", ("variant",)
    ),
    "router_shadow_throttled": MetricDef(
        "counter", "Requests not mirrored because the shadow guard throttled mirroring"
    ),
    "router_shadow_guard_active": MetricDef(
        "gauge", "1 while the shadow guard throttles mirroring (per worker, summed)"
    ),
    "router_shadow_guard_changes": MetricDef("counter", "Shadow guard state changes", ("state",)),
    "router_shadow_queue_depth": MetricDef("gauge", "Shadow jobs waiting"),
    "router_capture_queued": MetricDef("counter", "Records queued for capture", ("stream",)),
    "router_capture_written": MetricDef("counter", "Records written to Redis", ("stream",)),
    "router_capture_dropped": MetricDef(
        "counter",
        "Records dropped (queue_full, spool_full, spool_error, no_spool, unserialisable)",
        ("reason",),
    ),
    "router_capture_errors": MetricDef(
        "counter", "Failed or timed-out Redis writes (the batch went to the spool)", ("kind",)
    ),
    "router_capture_spooled": MetricDef("counter", "Records written to the local spool"),
    "router_capture_replayed": MetricDef("counter", "Spooled records replayed to Redis"),
    "router_capture_replay_duplicates": MetricDef(
        "counter", "Spooled records skipped at replay because their batch was already in Redis"
    ),
    "router_capture_queue_depth": MetricDef("gauge", "Records waiting in the capture queue"),
    "router_capture_spool_bytes": MetricDef("gauge", "Bytes in the local spool"),
    "router_capture_spool_segments": MetricDef("gauge", "Segment files in the local spool"),
    "router_capture_spool_recovered": MetricDef(
        "counter", "Spool segments taken over from an earlier or crashed writer process"
    ),
    "router_capture_spool_corrupt_bytes": MetricDef(
        "counter", "Spool bytes skipped at replay (torn last frame after a crash, CRC mismatch)"
    ),
    "router_capture_probes": MetricDef(
        "counter", "Write-path probes of Redis while capture spools (result: ok, failed)",
        ("result",),
    ),
    "router_capture_healthy": MetricDef(
        "gauge", "Workers whose last Redis write succeeded (per worker 0 or 1, summed)"
    ),
    "router_archive_records": MetricDef(
        "counter", "Stream entries written to the archive (kind: pairs, outcomes)", ("kind",)
    ),
    "router_archive_files": MetricDef("counter", "Parquet files written", ("kind",)),
    "router_archive_bytes": MetricDef("counter", "Bytes of Parquet written", ("kind",)),
    "router_archive_duplicates": MetricDef(
        "counter", "Redelivered entries skipped because a file already holds them", ("kind",)
    ),
    "router_archive_raw": MetricDef(
        "counter", "Entries kept whole in column raw (not JSON, or a field of another type)",
        ("kind",),
    ),
    "router_archive_errors": MetricDef(
        "counter",
        "Archiver failures (stage: read, write, lag, retention; trimmed: entries trimmed "
        "from a stream before they were archived)",
        ("stage",),
    ),
    "router_archive_lag_entries": MetricDef(
        "gauge", "Entries of a stream not yet archived (undelivered + pending)", ("stream",)
    ),
    "router_archive_lag_seconds": MetricDef(
        "gauge", "Age of the oldest entry of a stream not yet archived", ("stream",)
    ),
    "router_archive_buffered": MetricDef("gauge", "Entries read and waiting for their file"),
    "router_archive_partitions_deleted": MetricDef(
        "counter", "Hour partitions deleted by archive.retention_days", ("kind",)
    ),
    "router_control_changes": MetricDef("counter", "Live split/mirror changes applied", ()),
    "router_control_redis_ok": MetricDef(
        "gauge", "Workers that reached the shared live state in Redis on their last read"
    ),
    "router_control_last_known": MetricDef(
        "gauge", "Workers serving their last known live state (Redis unreachable at start-up)"
    ),
    "router_control_waiting": MetricDef(
        "gauge", "Workers without a live state yet (not ready: no Redis, no last known state)"
    ),
    "router_control_errors": MetricDef(
        "counter", "Live state errors (redis, heartbeat, invalid_document, last_known_write)",
        ("kind",),
    ),
    "router_control_conflicts": MetricDef(
        "counter", "Admin changes refused (409) because the live state changed underneath"
    ),
    "router_outcomes": MetricDef("counter", "Outcome rows received", ("result",)),
}

LabelKey = tuple[str, ...]


class Histogram:
    __slots__ = ("buckets", "count", "counts", "sum")

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # last is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1


class Metrics:
    """One process's metric values. All mutators are O(1) and allocation-light."""

    def __init__(self) -> None:
        self.counters: dict[tuple[str, LabelKey], float] = {}
        self.gauges: dict[tuple[str, LabelKey], float] = {}
        self.histograms: dict[tuple[str, LabelKey], Histogram] = {}

    def inc(self, name: str, labels: LabelKey = (), amount: float = 1.0) -> None:
        key = (name, labels)
        self.counters[key] = self.counters.get(key, 0.0) + amount

    def set(self, name: str, value: float, labels: LabelKey = ()) -> None:
        self.gauges[(name, labels)] = value

    def add(self, name: str, amount: float, labels: LabelKey = ()) -> None:
        key = (name, labels)
        self.gauges[key] = self.gauges.get(key, 0.0) + amount

    def observe(self, name: str, value: float, labels: LabelKey = ()) -> None:
        key = (name, labels)
        h = self.histograms.get(key)
        if h is None:
            h = self.histograms[key] = Histogram()
        h.observe(value)

    def counter_value(self, name: str, labels: LabelKey | None = None) -> float:
        """Sum of a counter over all label sets (or one label set)."""
        return sum(v for (n, lk), v in self.counters.items() if n == name and labels in (None, lk))

    def snapshot(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "ts": time.time(),
            "counters": [[n, list(lk), v] for (n, lk), v in self.counters.items()],
            "gauges": [[n, list(lk), v] for (n, lk), v in self.gauges.items()],
            "histograms": [
                [n, list(lk), list(h.buckets), h.counts, h.sum, h.count]
                for (n, lk), h in self.histograms.items()
            ],
        }


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SnapshotStore:
    """Per-worker snapshot files in a directory shared by the workers of one router."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)

    def write(self, metrics: Metrics) -> None:
        snap = metrics.snapshot()
        path = self.dir / f"worker-{snap['pid']}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(snap))
        os.replace(tmp, path)

    def read_all(self, live: Metrics | None = None) -> list[dict[str, Any]]:
        own = os.getpid()
        snaps: list[dict[str, Any]] = []
        for path in sorted(self.dir.glob("worker-*.json")):
            with contextlib.suppress(OSError, orjson.JSONDecodeError):
                snap = orjson.loads(path.read_bytes())
                if live is not None and snap.get("pid") == own:
                    continue
                snaps.append(snap)
        if live is not None:
            snaps.append(live.snapshot())
        return snaps


def merge_snapshots(snaps: Iterable[dict[str, Any]]) -> dict[str, Any]:
    counters: dict[tuple[str, LabelKey], float] = {}
    gauges: dict[tuple[str, LabelKey], float] = {}
    hists: dict[tuple[str, LabelKey], list[Any]] = {}
    own = os.getpid()
    for snap in snaps:
        alive = snap.get("pid") == own or _pid_alive(int(snap.get("pid", 0)))
        for n, lk, v in snap.get("counters", []):
            key = (n, tuple(lk))
            counters[key] = counters.get(key, 0.0) + v
        if alive:
            for n, lk, v in snap.get("gauges", []):
                key = (n, tuple(lk))
                gauges[key] = gauges.get(key, 0.0) + v
        for n, lk, bounds, counts, total, count in snap.get("histograms", []):
            key = (n, tuple(lk))
            if key not in hists:
                hists[key] = [list(bounds), list(counts), total, count]
            else:
                acc = hists[key]
                acc[1] = [a + b for a, b in zip(acc[1], counts, strict=True)]
                acc[2] += total
                acc[3] += count
    return {"counters": counters, "gauges": gauges, "histograms": hists}


class _MergedCollector:
    def __init__(self, merged: dict[str, Any]) -> None:
        self.merged = merged

    def collect(self) -> Iterator[Metric]:
        by_name: dict[str, list[tuple[LabelKey, Any]]] = {}
        for section in ("counters", "gauges", "histograms"):
            for (name, lk), value in self.merged[section].items():
                by_name.setdefault(name, []).append((lk, value))
        for name in sorted(by_name):
            d = CATALOGUE.get(name, MetricDef("gauge", name))
            series = sorted(by_name[name], key=lambda s: s[0])
            fam: Metric
            if d.kind == "counter":
                fam = CounterMetricFamily(name, d.help, labels=list(d.labels))
                for lk, v in series:
                    fam.add_metric(list(lk), v)
            elif d.kind == "gauge":
                fam = GaugeMetricFamily(name, d.help, labels=list(d.labels))
                for lk, v in series:
                    fam.add_metric(list(lk), v)
            else:
                fam = HistogramMetricFamily(name, d.help, labels=list(d.labels))
                for lk, (bounds, counts, total, _count) in series:
                    cumulative, running = [], 0
                    for bound, c in zip([*bounds, float("inf")], counts, strict=True):
                        running += c
                        cumulative.append((_fmt_bound(bound), running))
                    fam.add_metric(list(lk), cumulative, total)
            yield fam


def _fmt_bound(b: float) -> str:
    return "+Inf" if b == float("inf") else repr(float(b))


def render_prometheus(merged: dict[str, Any]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_MergedCollector(merged))
    return generate_latest(registry)


def declare_defaults(metrics: Metrics) -> None:
    """Pre-create the zero series users alert on, so they exist before the first event."""
    for name in (
        "router_shadow_throttled",
        "router_control_changes",
    ):
        metrics.inc(name, (), 0.0)
    for reason in ("queue_full", "body_too_large", "shutdown", "budget", "budget_burst"):
        metrics.inc("router_shadow_dropped", (reason,), 0.0)
    for outcome in ("honoured", "rejected", "unknown_variant"):
        metrics.inc("router_forced_requests", (outcome,), 0.0)
    for reason in ("queue_full", "spool_full"):
        metrics.inc("router_capture_dropped", (reason,), 0.0)
    for name in ("router_capture_spooled", "router_capture_replayed",
                 "router_capture_replay_duplicates"):  # fmt: skip
        metrics.inc(name, (), 0.0)
    metrics.inc("router_assignment_fallbacks", ("no_unit",), 0.0)
    for reason in ("connect", "timeout", "5xx", "protocol", "not_retried"):
        metrics.inc("router_challenger_fallbacks", (reason,), 0.0)
    for reason in ("too_many_connections", "header_too_large", "header_timeout"):
        metrics.inc("router_rejected_requests", (reason,), 0.0)
    metrics.inc("router_write_paused", (), 0.0)
    metrics.set("router_in_flight_requests", 0.0)
    metrics.set("router_shadow_guard_active", 0.0)
