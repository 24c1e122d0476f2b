"""``<prefix>/challengers`` of the admin API: list, add, remove and re-weight challengers live.

``GET`` lists them (name, url, version, split, mirror, bucket extents, upstream settings).
``POST`` takes one change (see :func:`router.sidecar.challengers.apply_change`)::

    {"op": "add", "challenger": {"name": "c", "url": "http://...", "version": "v3",
                                 "split": 0.1, "mirror": 0.5}, "note": "why"}
    {"op": "update", "name": "a", "split": 0.2}
    {"op": "remove", "name": "b"}

The change is validated like the config file (400 naming the field otherwise), written to the
live state atomically (with the shared live state in Redis: a compare-and-set on the version
this worker applied, audited as ``live_changed`` and sent to webhooks; 409 when it moved, 503
when Redis is unreachable), applied by this worker at once and by every other within a second,
and logged with who made it; the live state keeps ``updated_by`` and ``note``. Removing a
challenger closes its connection pools once their requests finished.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

from router.capture.controlplane import LiveConflict
from router.sidecar.app import RouterApp
from router.sidecar.challengers import ChangeError, apply_change
from router.sidecar.control import ChallengerLive, LiveState, with_challengers
from router.sidecar.http_messages import Request, Response, json_error, json_response

log = logging.getLogger("router.admin")


def challengers_view(app: RouterApp) -> dict[str, Any]:
    s = app.state
    return {
        "version": s.version,
        "expired": s.expired,
        "challengers": [c.to_json() for c in s.challengers],
        "updated_by": s.updated_by,
        "note": s.note,
    }


def _fitting(app: RouterApp, state: LiveState, body: dict[str, Any]) -> tuple[ChallengerLive, ...]:
    """The challengers after the change, refused (:class:`ChangeError`) when their pools do not
    fit the file descriptors this worker reserved at start."""
    changed = apply_change(state, body)
    why = app.check_pools(changed)
    if why is not None:
        raise ChangeError(why)
    return changed


async def handle_challengers(app: RouterApp, request: Request) -> Response:
    if request.method == "GET":
        return json_response(challengers_view(app))
    if request.method != "POST":
        return json_error(405, "method not allowed")
    try:
        body = orjson.loads(request.body)
    except orjson.JSONDecodeError as exc:
        return json_error(400, "invalid change", detail=f"body is not JSON: {exc}")
    if not isinstance(body, dict):
        return json_error(400, "invalid change", detail="body must be a JSON object")
    note = str(body.get("note", ""))[:500]
    by = f"admin@{request.peer}"
    try:
        if app.fleet is not None:  # the fleet's shared live state: compare-and-set, audited
            changed = with_challengers(app.state, _fitting(app, app.state, body))
            doc = {
                "challengers": [c.to_json() for c in changed.challengers],
                "split": changed.split,
                "mirror": changed.mirror,
                "challenger": {"url": changed.challenger.url,
                               "version": changed.challenger.version},
            }  # fmt: skip
            try:
                new = await app.fleet.change(doc, expected=app.state.version, actor=by,
                                             note=note)  # fmt: skip
            except LiveConflict as exc:
                app.metrics.inc("router_control_conflicts")
                return json_response({"error": "live state changed underneath: retry",
                                      "current_version": (exc.current or {}).get("version")},
                                     409)  # fmt: skip
            except Exception as exc:  # Redis unreachable: never applied to one replica only
                app.metrics.inc("router_control_errors", ("admin_change",))
                return json_error(503, "shared live state unavailable; nothing changed",
                                  detail=f"{type(exc).__name__}: {exc}")  # fmt: skip
        else:
            got = app.control.modify(
                by, note, lambda cur: {"challengers": _fitting(app, cur, body)}
            )
            assert got is not None  # (the change function never declines)
            new = got
            app.apply_state(new)
    except ChangeError as exc:
        app.metrics.inc("router_admin_changes", ("rejected",))
        return json_error(400, "invalid change", detail=str(exc))
    app.metrics.inc("router_admin_changes", ("applied",))
    log.warning("admin change v%d by %s: challengers %s %s%s", new.version, by, body.get("op"),
                body.get("name") or (body.get("challenger") or {}).get("name"),
                f" ({note})" if note else "")  # fmt: skip
    return json_response(challengers_view(app))
