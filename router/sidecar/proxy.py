"""The hot path: forward one request to the served model and answer the client.

Per request: read the body (bounded), find the unit (header, else JSON body path, else the
request id, counted), hash it into a bucket, pick the served variant, forward with hop-by-hop
headers (and a client-supplied shadow marker header: only the router marks shadows) removed and
``X-Forwarded-*`` added, answer with the upstream's status, headers and body plus
``X-Request-Id`` and ``X-Router-Variant`` (replacing any the upstream set). Mirroring, capture and
metrics export are handed off to background tasks; the only await on this path is the served
model. The header rules and the request id are :mod:`router.sidecar.headers`. The noise floor
(:func:`in_noise_sample`) repeats the champion's call for a sample of units, off the hot path too.

A streamed answer (:mod:`router.sidecar.upstream_stream`: chunked, close-delimited, an event
stream, or longer than ``limits.buffer_response_bytes``) is returned at its headers and passed
on by the server as it arrives; its side of the record (duration, size, events, the kept first
``capture.max_response_bytes``) is filled when it ends, and only then is the shadow copy sent and
the record captured. Challenger fallback happens only before the first byte was sent: a
challenger that fails mid-stream leaves the client with a truncated answer, as a proxy must.
"""

from __future__ import annotations

import hmac
import logging
import time
from functools import partial

import orjson

from router.capture.records import PendingRecord, Side, get_path
from router.sidecar.app import MirrorRoute, RouterApp
from router.sidecar.assign import bucket
from router.sidecar.headers import (
    client_response,
    forward_headers,
    new_request_id,
    valid_request_id,
)
from router.sidecar.http_messages import Request, Response, json_error
from router.sidecar.shadow import ShadowJob, error_kind
from router.sidecar.upstream_stream import BodyStream
from router.sidecar.upstream_types import UpstreamError, UpstreamResponse, UpstreamTimeout

log = logging.getLogger("router.proxy")


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
    idx = app.owner[b]  # 0: the champion; i: the i-th challenger (see assign.owner_table)
    forced = False
    if app.force_header is not None and app.force_header in hdrs:
        wanted = _forced_variant(app, hdrs, unit)
        if wanted is not None:
            if wanted not in app.upstreams:
                m.inc("router_forced_requests", ("unknown_variant",))
                return json_error(400, f"unknown variant in {app.cfg.experiment.force_header}",
                                  variant=wanted, known=app.variants)  # fmt: skip
            m.inc("router_forced_requests", ("honoured",))
            idx = app.variants.index(wanted)
            forced = True
    variant = app.variants[idx]
    served = "challenger" if idx else "champion"
    mirror_to: list[str] = []
    skipped: dict[str, str] | None = None
    if app.mirror_any and not forced:
        routes = app.mirror_routes[idx]
        if routes:
            mb = bucket(app.mirror_salt, unit)
            for r in routes:
                if mb >= r.raw:
                    continue
                why = _mirror_refused(app, r, mb, len(body) > limits.mirror_max_body)
                if why is None:
                    mirror_to.append(r.target)
                else:
                    if skipped is None:
                        skipped = {}
                    skipped[r.target] = why

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
        variant=variant,
        arm=variant if idx else None,
        forced=forced,
        mirror_skipped=skipped,
    )

    # --- the served call ---------------------------------------------------------------------
    m.add("router_in_flight_requests", 1.0)
    fallback: str | None = None
    answered_by = variant
    try:
        resp, err = await call_upstream(app, variant, method, target, fwd, body, rec)
        if idx and app.fallback_to_champion and not forced:
            reason = None
            if err is not None:
                reason = error_kind(err)
            elif resp is not None and resp.status >= 500:
                reason = "5xx"
            if reason is not None:
                if resp is not None and resp.stream is not None:
                    resp.stream.abort("fallback")  # nothing was sent yet
                    _count_stream(app, variant, "served", resp.stream)
                m.inc("router_challenger_fallbacks", (reason,))
                fallback = f"challenger-{reason}"
                answered_by = "champion"
                mirror_to = []  # both models were called on the live path already
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

        stream = resp.stream
        if stream is not None:
            # passed on by the server as it arrives; the rest of the work when it ends
            out.stream = stream
            stream.when_done(
                partial(_stream_ended, app, rec, answered_by, mirror_to, unit, method, target,
                        fwd, body)
            )  # fmt: skip
            return out
        _after_answer(app, rec, mirror_to, answered_by, unit, method, target, fwd, body)
        return out
    finally:
        m.add("router_in_flight_requests", -1.0)
        m.observe("router_request_duration_seconds", time.perf_counter() - t0)


def _after_answer(
    app: RouterApp,
    rec: PendingRecord,
    mirror_to: list[str],
    answered_by: str,
    unit: str,
    method: bytes,
    target: bytes,
    fwd: list[tuple[bytes, bytes]],
    body: bytes,
) -> None:
    """The served answer is complete: the noise floor and the shadow copies (off the hot
    path), or capture."""
    repeat = bool(
        app.noise_threshold
        and answered_by == "champion"
        and not rec.forced
        and in_noise_sample(app, unit, body)
    )
    if repeat or mirror_to:
        _shadow_jobs(app, rec, mirror_to, repeat, method, target, [*fwd, app.shadow_header], body)
    else:
        app.capture_submit(rec)


def fill_stream_side(side: Side, stream: BodyStream, t0: float) -> None:
    """A streamed answer's facts on its side of the record (served or shadow)."""
    side.streamed = True
    side.duration_ms = side.latency_ms = (stream.ended_at - t0) * 1000.0
    if stream.first_at:
        side.ttfb_ms = (stream.first_at - t0) * 1000.0
    side.body_bytes = stream.size
    if stream.event_stream:
        side.events = stream.events
    side.body = stream.body
    if stream.truncated:
        side.truncated = True
        side.response_bytes = stream.size


def _count_stream(app: RouterApp, variant: str, role: str, stream: BodyStream) -> None:
    m = app.metrics
    m.inc("router_streams", (variant, role, stream.outcome or "open"))
    m.inc("router_stream_bytes", (variant, role), stream.size)
    if stream.events:
        m.inc("router_stream_events", (variant, role), stream.events)


def _stream_ended(
    app: RouterApp,
    rec: PendingRecord,
    variant: str,
    mirror_to: list[str],
    unit: str,
    method: bytes,
    target: bytes,
    fwd: list[tuple[bytes, bytes]],
    body: bytes,
    stream: BodyStream,
) -> None:
    """The served stream ended (complete, failed, or the client went away)."""
    side = rec.champion if variant == "champion" else rec.challenger
    assert side is not None
    t0 = stream.origin
    fill_stream_side(side, stream, t0)
    m = app.metrics
    _count_stream(app, variant, "served", stream)
    if stream.first_at:
        m.observe("router_upstream_ttfb_seconds", stream.first_at - t0, (variant, "served"))
    if stream.truncated:
        m.inc("router_capture_truncated", (variant,))
    if stream.dropped_trailers:
        m.inc("router_trailers_dropped", ("response",), stream.dropped_trailers)
    if stream.outcome == "client_aborted":
        rec.client_aborted = True
    elif stream.error is not None:
        kind = error_kind(stream.error)
        side.error = f"{kind}: mid-stream: {stream.error}"[:300]
        m.inc("router_upstream_errors", (variant, "served", kind))
    _after_answer(app, rec, mirror_to, variant, unit, method, target, fwd, body)


def _forced_variant(app: RouterApp, hdrs: dict[str, str], unit: str) -> str | None:
    """The variant a request forces, when it may (a valid force token, compared in constant
    time, or a unit on ``experiment.force_units``); otherwise None, counted and logged (the
    header is never forwarded either way)."""
    wanted = hdrs[app.force_header or ""].strip()
    token = hdrs.get(app.force_token_header, "").strip().encode()
    if (app.force_token and hmac.compare_digest(token, app.force_token)) or (
        unit in app.force_units
    ):
        return wanted
    m = app.metrics
    m.inc("router_forced_requests", ("rejected",))
    if m.counter_value("router_forced_requests") % 1000 == 1:  # the first, then every 1000th
        log.warning("force header without a valid token from a unit not allowed: stripped "
                    "(router_forced_requests_total{outcome=\"rejected\"})")  # fmt: skip
    return None


def _mirror_refused(app: RouterApp, r: MirrorRoute, mb: int, too_big: bool) -> str | None:
    """Why a unit inside route ``r``'s mirror share is not mirrored now (counted), or None."""
    m = app.metrics
    if mb >= r.guarded:  # the shadow guard throttled this unit's mirroring
        m.inc("router_shadow_throttled")
        return "throttled"
    budget = r.budget
    if budget is not None:
        budget.eligible += 1
        if mb >= r.effective:  # cut by unit hash to keep within the budget
            m.inc("router_shadow_dropped", ("budget",))
            return "budget"
    if too_big:
        m.inc("router_shadow_dropped", ("body_too_large",))
        return "body_too_large"
    if budget is not None and not budget.take(time.monotonic()):
        m.inc("router_shadow_dropped", ("budget_burst",))
        return "budget_burst"
    return None


def in_noise_sample(app: RouterApp, unit: str, body: bytes) -> bool:
    """The unit is in the noise-floor sample (its own hash, ``<salt>:noise``): its champion
    answer is asked a second time, as a shadow job filling ``rec.champion_repeat`` (never
    answered to the client)."""
    if bucket(app.noise_salt, unit) >= app.noise_threshold:
        return False
    if len(body) > app.cfg.limits.mirror_max_body:
        app.metrics.inc("router_shadow_dropped", ("body_too_large",))
        return False
    return True


def _shadow_jobs(
    app: RouterApp,
    rec: PendingRecord,
    targets: list[str],
    repeat: bool,
    method: bytes,
    target: bytes,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
) -> None:
    """Hand one shadow job per target (and the noise floor's repeat) to the dispatcher; the
    record is captured when the last one ends (``rec.waiting``), or now when none was taken.
    The first challenger mirrored fills the record's ``challenger`` side (its name in
    ``arm``); further ones go to ``shadows``."""
    jobs: list[tuple[str, str, Side]] = []
    if repeat:
        rec.champion_repeat = Side(version=app.version_of("champion"))
        jobs.append(("champion_repeat", "champion", rec.champion_repeat))
    for name in targets:
        side = Side(version=app.version_of(name))
        if name == "champion":
            rec.champion = side
        elif rec.challenger is None:
            rec.challenger, rec.arm = side, name
        else:
            if rec.shadows is None:
                rec.shadows = {}
            rec.shadows[name] = side
        jobs.append((name, name, side))
    rec.mirrored = bool(targets)
    rec.waiting = len(jobs)
    for label, model, side in jobs:
        job = ShadowJob(
            record=rec,
            variant=label,
            pool=app.shadow_pools[model],
            method=method,
            target=app.target_for(model, target),
            headers=app.headers_for(model, headers),
            body=body,
            timeout=app.timeout_of(model),
            side=side,
        )
        if not app.shadow.offer(job):
            if label == "champion_repeat":
                rec.champion_repeat = None
            else:
                _unmirror(rec, label, side)
            rec.waiting -= 1
    if rec.waiting <= 0:
        app.capture_submit(rec)


def _unmirror(rec: PendingRecord, name: str, side: Side) -> None:
    if rec.champion is side:
        rec.champion = None
    elif rec.challenger is side:
        rec.challenger, rec.arm = None, None
        if rec.shadows:  # promote a further shadow to the record's challenger side
            first = next(iter(rec.shadows))
            rec.challenger, rec.arm = rec.shadows.pop(first), first
    elif rec.shadows is not None:
        rec.shadows.pop(name, None)
    if rec.shadows == {}:
        rec.shadows = None
    rec.mirrored = (rec.champion is not None) and (rec.challenger is not None)
    if rec.mirror_skipped is None:
        rec.mirror_skipped = {}
    rec.mirror_skipped[name] = "not_queued"  # shadow queue full, or shutting down


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
    if variant == "champion":
        rec.champion = side
    else:
        rec.challenger = side
    m = app.metrics
    t0 = time.perf_counter()
    try:
        resp = await app.pools[variant].request(
            method, app.target_for(variant, target), app.headers_for(variant, headers), body
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
    stream = resp.stream
    if stream is None:
        # buffered whole: duration is latency_ms; the TTFB histogram is for streams (a
        # buffered answer's first byte is within a read of its last)
        side.body = resp.body
        side.body_bytes = len(resp.body)
        if resp.first_byte_at:
            side.ttfb_ms = (resp.first_byte_at - t0) * 1000.0
    else:
        stream.origin = t0  # (the side is filled when the stream ends)
    m.observe("router_upstream_latency_seconds", elapsed, (variant, "served"))
    if variant == "champion":
        app.guard.observe(time.time(), elapsed, resp.status >= 500)
    return resp, None
