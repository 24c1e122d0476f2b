"""The hot path: forward one request to the served model and answer the client.

Per request: read the body (bounded), find the unit (header, else JSON body path, else the
request id, counted), hash it into a bucket, pick the served variant, forward with hop-by-hop
headers (and a client-supplied shadow marker header: only the router marks shadows) removed and
``X-Forwarded-*`` added, answer with the upstream's status, headers and body plus
``X-Request-Id`` and ``X-Router-Variant`` (replacing any the upstream set). Mirroring, capture and
metrics export are handed off to background tasks; the only await on this path is the served
model. The header rules and the request id are :mod:`router.sidecar.headers`. The noise floor
(:func:`noise_floor`) repeats the champion's call for a sample of units, off the hot path too.
"""

from __future__ import annotations

import time

import orjson

from router.capture.records import PendingRecord, Side, get_path
from router.sidecar.app import RouterApp
from router.sidecar.assign import bucket
from router.sidecar.headers import (
    client_response,
    forward_headers,
    new_request_id,
    valid_request_id,
)
from router.sidecar.http_messages import Request, Response, json_error
from router.sidecar.shadow import ShadowJob, error_kind
from router.sidecar.upstream_types import UpstreamError, UpstreamResponse, UpstreamTimeout


def _status_class(status: int) -> str:
    return f"{status // 100}xx"


async def handle_proxy(app: RouterApp, request: Request) -> Response:
    t0 = time.perf_counter()
    m = app.metrics
    exp = app.cfg.experiment
    limits = app.cfg.limits
    body = request.body  # the server already refused bodies over limits.max_body (413)
    hdrs = request.headers  # lower-case names
    given_id = hdrs.get("x-request-id")
    if given_id is not None and valid_request_id(given_id):
        request_id = given_id
        keep_id = True
    else:
        request_id = new_request_id()
        keep_id = False
        if given_id is not None:
            m.inc("router_request_ids_replaced", ("empty" if not given_id else "invalid",))

    # --- unit and segments --------------------------------------------------------------------
    unit: str | None = hdrs.get(app.unit_header) if app.unit_header else None
    doc: object = None
    if body and ((unit is None and app.unit_path) or app.body_segments):
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            doc = None
    if unit is None and app.unit_path and doc is not None:
        v = get_path(doc, app.unit_path)
        if isinstance(v, (str, int, float)) and not isinstance(v, bool):
            unit = str(v)
    if not unit:
        unit = request_id
        m.inc("router_assignment_fallbacks", ("no_unit",))
    segment: dict[str, str] = {}
    for seg in exp.segments:
        val = hdrs.get(seg.header.lower()) if seg.header else None
        if val is None and seg.json_path and doc is not None:
            v = get_path(doc, seg.json_path)
            if isinstance(v, (str, int, float, bool)):
                val = str(v)
        if val is not None:
            segment[seg.name] = val

    # --- assignment ------------------------------------------------------------------------
    b = bucket(app.salt, unit)
    served = "challenger" if b < app.split_threshold else "champion"
    mirrored = False
    if app.mirror_threshold_raw:
        mb = bucket(app.mirror_salt, unit)
        if mb < app.mirror_threshold_raw:
            if mb >= app.mirror_threshold:  # the shadow guard throttled this unit's mirroring
                m.inc("router_shadow_throttled")
            elif len(body) > limits.mirror_max_body:
                m.inc("router_shadow_dropped", ("body_too_large",))
            else:
                mirrored = True

    fwd = forward_headers(
        request, request_id, keep_id, app.drop_headers if keep_id else app.drop_headers_id
    )
    method = request.method.encode()
    target = request.raw_path.encode("latin-1")

    rec = PendingRecord(
        experiment=exp.name,
        request_id=request_id,
        ts=time.time(),
        unit=unit,
        bucket=b,
        served=served,
        mirrored=False,
        segment=segment,
        request_body=body if app.keep_body else None,
    )

    # --- the served call ---------------------------------------------------------------------
    m.add("router_in_flight_requests", 1.0)
    fallback: str | None = None
    answered_by = served
    try:
        resp, err = await call_upstream(app, served, method, target, fwd, body, rec)
        if served == "challenger" and app.fallback_to_champion:
            reason = None
            if err is not None:
                reason = error_kind(err)
            elif resp is not None and resp.status >= 500:
                reason = "5xx"
            if reason is not None:
                m.inc("router_challenger_fallbacks", (reason,))
                fallback = f"challenger-{reason}"
                answered_by = "champion"
                mirrored = False  # both models were called on the live path already
                resp, err = await call_upstream(app, "champion", method, target, fwd, body, rec)
        if err is not None or resp is None:
            rec.mirrored = False
            app.capture_submit(rec)
            m.inc("router_requests", (answered_by, "5xx"))
            if isinstance(err, UpstreamTimeout):
                out = json_error(504, "upstream timed out", upstream=answered_by, detail=str(err))
            else:
                out = json_error(502, "upstream unavailable", upstream=answered_by, detail=str(err))
            out.headers.append((b"X-Request-Id", request_id.encode()))
            out.headers.append((b"X-Router-Variant", answered_by.encode()))
            return out

        out = client_response(resp, request_id, answered_by, fallback)
        m.inc("router_requests", (answered_by, _status_class(resp.status)))
        if resp.dropped_trailers:
            m.inc("router_trailers_dropped", ("response",), resp.dropped_trailers)

        # --- shadow, off the hot path --------------------------------------------------------
        if (
            app.noise_threshold
            and answered_by == "champion"
            and noise_floor(app, rec, unit, method, target, fwd, body, mirrored)
        ):
            return out  # the noise floor took the record over (and the challenger's shadow)
        if mirrored:
            other = "champion" if served == "challenger" else "challenger"
            setattr(rec, other, Side(version=app.version_of(other)))
            rec.mirrored = True
            job = ShadowJob(
                record=rec,
                variant=other,
                pool=app.shadow_pools[other],
                method=method,
                target=app.target_for(other, target),
                headers=[*fwd, app.shadow_header],
                body=body,
                timeout=app.timeout_of(other),
            )
            if not app.shadow.offer(job):
                setattr(rec, other, None)
                rec.mirrored = False
                app.capture_submit(rec)
        else:
            app.capture_submit(rec)
        return out
    finally:
        m.add("router_in_flight_requests", -1.0)
        m.observe("router_request_duration_seconds", time.perf_counter() - t0)


def noise_floor(
    app: RouterApp,
    rec: PendingRecord,
    unit: str,
    method: bytes,
    target: bytes,
    fwd: list[tuple[bytes, bytes]],
    body: bytes,
    mirrored: bool,
) -> bool:
    """For a unit in the noise-floor sample (its own hash, ``<salt>:noise``), send the request
    to the champion a second time as a shadow job filling ``rec.champion_repeat`` (never
    answered to the client), together with the challenger's shadow when ``mirrored``, and
    capture ``rec`` when the last job ends. True when it took the record over; False when the
    unit is not in the sample (the caller goes on as without a noise floor)."""
    if bucket(app.noise_salt, unit) >= app.noise_threshold:
        return False
    if len(body) > app.cfg.limits.mirror_max_body:
        app.metrics.inc("router_shadow_dropped", ("body_too_large",))
        return False
    headers = [*fwd, app.shadow_header]
    jobs = [("champion_repeat", "champion")]
    if mirrored:
        jobs.append(("challenger", "challenger"))
    rec.waiting = len(jobs)
    for side, model in jobs:
        setattr(rec, side, Side(version=app.version_of(model)))
        if side == "challenger":
            rec.mirrored = True
        job = ShadowJob(record=rec, variant=side, pool=app.shadow_pools[model], method=method,
                        target=app.target_for(model, target), headers=headers, body=body,
                        timeout=app.timeout_of(model))  # fmt: skip
        if not app.shadow.offer(job):
            setattr(rec, side, None)
            if side == "challenger":
                rec.mirrored = False
            rec.waiting -= 1
    if rec.waiting <= 0:
        app.capture_submit(rec)
    return True


async def call_upstream(
    app: RouterApp,
    variant: str,
    method: bytes,
    target: bytes,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    rec: PendingRecord,
) -> tuple[UpstreamResponse | None, UpstreamError | None]:
    """Call ``variant`` on the served pool, fill its side of ``rec``, feed the guard."""
    side = Side(version=app.version_of(variant))
    setattr(rec, variant, side)
    m = app.metrics
    t0 = time.perf_counter()
    try:
        resp = await app.pools[variant].request(
            method, app.target_for(variant, target), headers, body
        )
    except UpstreamError as exc:
        elapsed = time.perf_counter() - t0
        kind = error_kind(exc)
        side.latency_ms = elapsed * 1000.0
        side.error = f"{kind}: {exc}"[:300]
        m.inc("router_upstream_errors", (variant, "served", kind))
        if variant == "champion":
            app.guard.observe(time.time(), elapsed, True)
        return None, exc
    elapsed = time.perf_counter() - t0
    side.latency_ms = elapsed * 1000.0
    side.status = resp.status
    side.body = resp.body
    m.observe("router_upstream_latency_seconds", elapsed, (variant, "served"))
    if variant == "champion":
        app.guard.observe(time.time(), elapsed, resp.status >= 500)
    return resp, None
