"""The hot path: forward one request to the served model and answer the client.

Per request: read the body (bounded), find the unit (header, else JSON body path, else the
request id, counted), hash it into a bucket, pick the served variant, forward with hop-by-hop
headers (and a client-supplied shadow marker header: only the router marks shadows) removed and
``X-Forwarded-*`` added, answer with the upstream's status, headers and body plus
``X-Request-Id`` and ``X-Router-Variant`` (replacing any the upstream set). Mirroring, capture and
metrics export are handed off to background tasks; the only await on this path is the served
model. The header rules and the request id are :mod:`router.sidecar.headers`.
"""

from __future__ import annotations

import hmac
import logging
import time

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

        # --- shadow, off the hot path --------------------------------------------------------
        if mirror_to:
            _mirror(app, rec, mirror_to, method, target, [*fwd, app.shadow_header], body)
        else:
            app.capture_submit(rec)
        return out
    finally:
        m.add("router_in_flight_requests", -1.0)
        m.observe("router_request_duration_seconds", time.perf_counter() - t0)


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


def _mirror(
    app: RouterApp,
    rec: PendingRecord,
    targets: list[str],
    method: bytes,
    target: bytes,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
) -> None:
    """Hand one shadow job per target to the dispatcher; the record is captured when the last
    finishes (or now, when none was taken). The first challenger mirrored fills the record's
    ``challenger`` side (its name in ``arm``); further ones go to ``shadows``."""
    rec.mirrored = True
    rec.pending_shadows = len(targets)
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
        job = ShadowJob(
            record=rec,
            variant=name,
            pool=app.shadow_pools[name],
            method=method,
            target=app.target_for(name, target),
            headers=headers,
            body=body,
            timeout=app.timeout_of(name),
            side=side,
        )
        if not app.shadow.offer(job):
            _unmirror(rec, name, side)
            rec.pending_shadows -= 1
    if rec.pending_shadows <= 0:
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
