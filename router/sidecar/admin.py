"""Operational and admin endpoints.

Open (for probes and scrapers): ``GET /healthz`` (the process is alive), ``GET /readyz``
(champion reachable and capture able to take records: Redis answers, or the local spool has room;
503 with the failing check otherwise; ``checks.capture`` reports ``redis``, ``spooling`` and
``spool_bytes``), ``GET /metrics``
(Prometheus text, merged across workers).

Token-protected (``Authorization: Bearer <token>``, token from the env var named by
``admin.token_env``, compared in constant time; 401 JSON error otherwise; 503 when no token is
configured, so an unconfigured admin API is closed, not open):

- ``GET  <prefix>/state``: live experiment state, guard state and counters.
- ``POST <prefix>/experiment``: ``{"split": f, "mirror": f, "champion": {"url", "version"},
  "challenger": {...}, "note": str, "expected_version": int}`` (any subset). With the shared
  live state (capture on a Redis) the change is a compare-and-set on the fleet's live state,
  based on ``expected_version`` (default: the version this worker applied): 409 with the
  current version and state when it moved, 503 when Redis is unreachable (never applied to one
  replica only); every replica applies it within a second, and it is audited. Without Redis it
  is applied on every worker of this router within a second.
  ``"expired": false`` re-opens an expired experiment; split, mirror and challenger are the
  first challenger's.
- ``GET|POST <prefix>/challengers``: list, add, remove and re-weight challengers live
  (:mod:`router.sidecar.admin_challengers`), through the same shared live state.
- ``GET  <prefix>/promotion?experiment=NAME``: the promotion controller's stage, step, history
  (through the injected promotion view; 503 naming the reason when the router has none).
- ``GET  <prefix>/report?experiment=NAME&format=json|md|html[&since=T&until=T]``: the analyzer's
  report over the captured streams, computed by ``router analyze`` in a separate, niced process
  so a large analysis never holds this worker's event loop or GIL.
- ``POST /outcomes``: outcome rows (see :mod:`router.capture.outcomes`); accepts the admin token
  or the separate outcomes token (``admin.outcomes_token_env``).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import re
import sys
import time
from dataclasses import asdict
from typing import Any
from urllib.parse import urlsplit

import orjson

from router.capture.controlplane import LiveConflict
from router.capture.outcomes import parse_outcomes
from router.metrics import merge_snapshots, render_prometheus
from router.sidecar.app import RouterApp
from router.sidecar.control import UpstreamPin
from router.sidecar.http_messages import Request, Response, json_error, json_response

log = logging.getLogger("router.admin")

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _json(data: Any, status: int = 200) -> Response:
    return json_response(data, status)


def _tokens(app: RouterApp, outcomes: bool) -> list[str]:
    names = [app.cfg.admin.token_env]
    if outcomes and app.cfg.admin.outcomes_token_env:
        names.append(app.cfg.admin.outcomes_token_env)
    return [t for t in (os.environ.get(n, "") for n in names) if t]


def check_token(app: RouterApp, request: Request, outcomes: bool = False) -> Response | None:
    """None when authorised, else the error response to send."""
    tokens = _tokens(app, outcomes)
    if not tokens:
        return json_error(
            503, "admin API disabled: no token configured", env=app.cfg.admin.token_env
        )
    auth = request.headers.get("authorization", "")
    scheme, _, given = auth.partition(" ")
    ok = False
    for t in tokens:  # compare against every token so timing does not reveal which one
        ok |= hmac.compare_digest(given.strip().encode(), t.encode())
    if scheme.lower() != "bearer" or not ok:
        return json_error(401, "missing or invalid bearer token")
    return None


async def _tcp_ok(host: str, port: int, timeout: float = 0.5) -> str | None:
    try:
        _, w = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError) as exc:
        return f"{type(exc).__name__}: {exc}"
    w.close()
    return None


async def handle_ops(app: RouterApp, request: Request, path: str) -> Response:
    if request.method not in ("GET", "HEAD"):
        return json_error(405, "method not allowed")
    if path == "/healthz":
        return _json({"status": "ok", "pid": os.getpid()})
    if path == "/metrics":
        merged = merge_snapshots(app.snapshots.read_all(live=app.metrics))
        return Response(
            200, render_prometheus(merged), [(b"Content-Type", PROMETHEUS_CONTENT_TYPE.encode())]
        )
    checks: dict[str, Any] = {}
    ok = True
    for variant in ("champion", "challenger"):
        pin: UpstreamPin = getattr(app.state, variant)
        parts = urlsplit(pin.url)
        err = await _tcp_ok(parts.hostname or "127.0.0.1", parts.port or 80)
        needed = variant == "champion" or (app.state.split > 0 and not app.state.expired)
        checks[variant] = {"ok": err is None, "required": needed, "error": err}
        ok &= err is None or not needed
    if len(app.state.challengers) > 1:  # A/B/n: each challenger, required while it serves
        each: dict[str, Any] = {}
        for c in app.state.challengers:
            parts = urlsplit(c.url)
            err = await _tcp_ok(parts.hostname or "127.0.0.1", parts.port or 80)
            needed = c.split > 0 and not app.state.expired
            each[c.name] = {"ok": err is None, "required": needed, "error": err}
            ok &= err is None or not needed
        checks["challengers"] = each
    if app.fleet is not None:
        # serving the last known state while Redis is down keeps the router in rotation (and
        # says so); only a worker with no state decided yet is not ready
        checks["control"] = app.fleet.readiness()
        ok &= bool(checks["control"]["ok"])
    else:
        checks["control"] = {"ok": True, "shared": False, "version": app.state.version}
    if app.writer is not None:
        # Redis down is not a reason to take the router out of rotation while the spool takes
        # the records (see CaptureWriter.readiness; it never raises)
        checks["capture"] = await app.writer.readiness()
        ok &= bool(checks["capture"]["ok"])
    else:
        checks["capture"] = {"ok": True, "enabled": False}
    return _json({"ready": ok, "checks": checks}, 200 if ok else 503)


def state_view(app: RouterApp) -> dict[str, Any]:
    m = app.metrics
    g = app.guard.last
    return {
        "experiment": app.cfg.experiment.name,
        "state": app.state.to_json(),
        "control": app.fleet.readiness() if app.fleet is not None else {"shared": False},
        "guard": {
            "throttled": g.throttled,
            "reason": g.reason,
            "window_requests": g.requests,
            "error_rate": g.error_rate,
            "p99_ms": g.p99_ms,
            "effective_mirror": app.live.mirror_threshold / 10000,
        },
        "worker": {"pid": os.getpid(), "uptime_s": round(time.time() - app.started_at, 3)},
        "capture": app.writer.status() if app.writer is not None else {"enabled": False},
        "counters": {
            "requests": m.counter_value("router_requests"),
            "assignment_fallbacks": m.counter_value("router_assignment_fallbacks"),
            "challenger_fallbacks": m.counter_value("router_challenger_fallbacks"),
            "shadow_dispatched": m.counter_value("router_shadow_dispatched"),
            "shadow_dropped": m.counter_value("router_shadow_dropped"),
            "shadow_failed": m.counter_value("router_shadow_failed"),
            "shadow_throttled": m.counter_value("router_shadow_throttled"),
            "capture_written": m.counter_value("router_capture_written"),
            "capture_dropped": m.counter_value("router_capture_dropped"),
            "capture_spooled": m.counter_value("router_capture_spooled"),
            "capture_replayed": m.counter_value("router_capture_replayed"),
        },
        "counters_scope": "this worker; /metrics has the sum over workers",
    }


def _fraction(body: dict[str, Any], key: str) -> float | None:
    if key not in body:
        return None
    v = body[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= float(v) <= 1.0:
        raise ValueError(f"{key}: must be a number within [0, 1]")
    return float(v)


def _pin(body: dict[str, Any], key: str) -> UpstreamPin | None:
    if key not in body:
        return None
    v = body[key]
    if not isinstance(v, dict) or set(v) - {"url", "version"} or not v.get("version"):
        raise ValueError(f"{key}: must be {{'url': 'http://…', 'version': '…'}}")
    url = str(v.get("url", ""))
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"{key}.url: must be an http:// URL")
    return UpstreamPin(url.rstrip("/"), str(v["version"]))


async def handle_admin(app: RouterApp, request: Request) -> Response:
    path = request.raw_path.split("?", 1)[0]
    if path == "/outcomes":
        denied = check_token(app, request, outcomes=True)
        if denied is not None:
            return denied
        if request.method != "POST":
            return json_error(405, "method not allowed")
        return await handle_outcomes(app, request)
    denied = check_token(app, request)
    if denied is not None:
        return denied
    sub = path[len(app.admin_prefix) :]
    if sub == "/state" and request.method == "GET":
        return _json(state_view(app))
    if sub == "/report" and request.method == "GET":
        return await handle_report(app, request)
    if sub == "/promotion" and request.method == "GET":
        return await handle_promotion(app, request)
    if sub == "/challengers":
        from router.sidecar.admin_challengers import handle_challengers

        return await handle_challengers(app, request)
    if sub == "/experiment" and request.method == "POST":
        try:
            body = orjson.loads(request.body)
            if not isinstance(body, dict):
                raise ValueError("body must be a JSON object")
            unknown = set(body) - {"split", "mirror", "champion", "challenger", "note",
                                   "expected_version", "expired"}  # fmt: skip
            if unknown:
                raise ValueError(f"unknown key(s): {', '.join(sorted(unknown))}")
            changes: dict[str, Any] = {}
            for key in ("split", "mirror"):
                f = _fraction(body, key)
                if f is not None:
                    changes[key] = f
            for key in ("champion", "challenger"):
                p = _pin(body, key)
                if p is not None:
                    changes[key] = p
            if "expired" in body:  # false re-opens an expired experiment
                if not isinstance(body["expired"], bool):
                    raise ValueError("expired: must be true or false")
                changes["expired"] = body["expired"]
            note = str(body.get("note", ""))[:500]
            expected = body.get("expected_version")
            if expected is not None and (
                isinstance(expected, bool) or not isinstance(expected, int)
            ):
                raise ValueError("expected_version: must be an integer")
        except (orjson.JSONDecodeError, ValueError) as exc:
            return json_error(400, "invalid change", detail=str(exc))
        if not changes:
            return json_error(400, "invalid change", detail="nothing to change")
        by = f"admin@{request.peer}"
        if app.fleet is not None:
            return await _shared_change(app, changes, expected, by, note)
        try:
            new = app.control.update(by=by, note=note, **changes)
        except ValueError as exc:  # the first challenger's new split does not fit the others'
            return json_error(400, "invalid change", detail=f"split: {exc}")
        app.apply_state(new)
        log.warning("admin change v%d: %s", new.version, {k: str(v) for k, v in changes.items()})
        return _json(state_view(app))
    return json_error(404, "no such admin endpoint", path=path)


async def _shared_change(
    app: RouterApp, changes: dict[str, Any], expected: int | None, by: str, note: str
) -> Response:
    """Compare-and-set the fleet's live state (see :meth:`FleetFollower.change`)."""
    assert app.fleet is not None
    doc = {k: (asdict(v) if isinstance(v, UpstreamPin) else v) for k, v in changes.items()}
    try:
        new = await app.fleet.change(doc, expected=expected, actor=by, note=note)
    except LiveConflict as exc:
        app.metrics.inc("router_control_conflicts")
        cur = exc.current or {}
        return _json({"error": "live state changed underneath: re-read and retry",
                      "current_version": cur.get("version"), "state": cur}, 409)  # fmt: skip
    except Exception as exc:  # Redis unreachable: refuse, never apply to one replica only
        app.metrics.inc("router_control_errors", ("admin_change",))
        log.error("admin change refused: shared live state unavailable: %s", exc)
        return json_error(503, "shared live state unavailable; nothing changed",
                          detail=f"{type(exc).__name__}: {exc}")  # fmt: skip
    log.warning("admin change v%d (fleet-wide): %s", new.version, doc)
    return _json(state_view(app))


async def handle_outcomes(app: RouterApp, request: Request) -> Response:
    if app.writer is None:
        return json_error(503, "capture is disabled; outcomes cannot be stored")
    raw = request.body
    accepted, rejected = parse_outcomes(
        raw, default_experiment=app.cfg.experiment.name, max_rows=app.cfg.admin.outcomes_max_rows
    )
    stored = 0
    for row in accepted:  # same writer, batching, spool and exactly-once replay as records
        if app.writer.submit_outcome(row):
            stored += 1
    m = app.metrics
    m.inc("router_outcomes", ("accepted",), stored)
    m.inc("router_outcomes", ("rejected",), len(rejected))
    dropped = len(accepted) - stored
    if dropped:
        m.inc("router_outcomes", ("dropped",), dropped)
    body = {
        "accepted": stored,
        "rejected": len(rejected),
        "dropped": dropped,
        "errors": [{"line": line, "reason": reason} for line, reason in rejected],
    }
    status = 400 if not accepted else (503 if dropped == len(accepted) else 200)
    return _json(body, status)


_REPORT_TYPES = {
    "json": "application/json",
    "md": "text/markdown; charset=utf-8",
    "html": "text/html; charset=utf-8",
}
_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
_TIME = re.compile(r"^[0-9T:.+\-Z ]{1,40}$")


async def handle_promotion(app: RouterApp, request: Request) -> Response:
    """Stage, step, approvals, last verdict and history of the promotion controller (read from
    the controller's state in Redis), as ``router canary status --json`` prints it, through the
    view the serve command injected (:data:`router.sidecar.app.PromotionView`)."""
    experiment = request.query.get("experiment", app.cfg.experiment.name)
    if not _NAME.match(experiment):
        return json_error(400, "invalid experiment name", experiment=experiment)
    if app.redis_url is None:
        return json_error(503, "capture is disabled; no promotion state")
    if app.promotion_view is None:
        why = "this router was started without one (router serve provides it)"
        return json_error(503, "promotion view unavailable", detail=why)
    try:
        view = await app.promotion_view(app.redis_url, experiment)
    except Exception as exc:  # Redis down: report it, do not crash the worker
        return json_error(503, "promotion state unavailable", detail=str(exc))
    if view is None:
        return json_error(404, f"no promotion state for experiment {experiment!r}",
                          experiment=experiment)  # fmt: skip
    return _json(view)


async def handle_report(app: RouterApp, request: Request) -> Response:
    q = request.query
    experiment = q.get("experiment", app.cfg.experiment.name)
    fmt = q.get("format", "json")
    if fmt not in _REPORT_TYPES:
        return json_error(400, "format must be json, md or html", format=fmt)
    if not _NAME.match(experiment):
        return json_error(400, "invalid experiment name", experiment=experiment)
    if app.redis_url is None:
        return json_error(503, "capture is disabled; nothing to analyse")
    args = [sys.executable, "-m", "router", "analyze", "--experiment", experiment,
            "--redis", app.redis_url, "--format", fmt,
            "--kind", app.cfg.experiment.prediction_kind]  # fmt: skip
    if experiment == app.cfg.experiment.name:  # the live split, for the sample-ratio check
        challengers = app.state.challengers
        if len(challengers) > 1:  # A/B/n: every challenger's share
            args += ["--shares", ",".join(f"{c.name}={c.split!r}" for c in challengers)]
        else:
            args += ["--split", repr(app.state.split)]
    for key in ("since", "until"):
        value = q.get(key)
        if value is not None:
            if not _TIME.match(value):
                return json_error(400, f"invalid {key}", value=value)
            args += [f"--{key}", value]
    if app.cfg.admin.policy:
        args += ["--policy", app.cfg.admin.policy]
    if app.cfg.archive.uri:  # windows the streams no longer hold come from the archive
        args += ["--archive", app.cfg.archive.uri]
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=lambda: os.nice(10),  # the report never outranks live traffic
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), app.cfg.admin.report_timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return json_error(504, "report timed out", timeout_s=app.cfg.admin.report_timeout_s)
    if proc.returncode != 0:
        detail = err.decode(errors="replace").strip().splitlines()[-3:]
        if proc.returncode == 2:  # the analyzer refused this window or data (it says why)
            log.warning("report for %s refused: %s", experiment, " | ".join(detail))
            return json_error(422, "report refused", detail=detail)
        if proc.returncode == 3:  # Redis or the archive could not be read
            log.error("report for %s: data unavailable: %s", experiment, " | ".join(detail))
            return json_error(503, "report data unavailable", detail=detail)
        log.error("report for %s failed: %s", experiment, " | ".join(detail))
        return json_error(500, "report failed", detail=detail)
    return Response(200, out, [(b"Content-Type", _REPORT_TYPES[fmt].encode())])
