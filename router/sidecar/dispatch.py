"""The one place that routes a request: admin and ops endpoints, else the proxy.

:func:`handler_for` gives the HTTP server its handler for one worker's :class:`RouterApp`.
The handlers (:mod:`router.sidecar.admin`, :mod:`router.sidecar.proxy`) take the app as a
parameter; the app imports neither, so the dependencies point one way: dispatch -> handlers ->
app.
"""

from __future__ import annotations

import logging

from router.sidecar import admin
from router.sidecar.app import RouterApp
from router.sidecar.http_messages import Handler, Request, Response, json_error
from router.sidecar.proxy import handle_proxy

log = logging.getLogger("router")

OPS_PATHS = frozenset(("/metrics", "/healthz", "/readyz"))


def handler_for(app: RouterApp) -> Handler:
    """The request handler of ``app``: admin paths (under ``admin.prefix``, and ``/outcomes``),
    the ops paths (``/metrics``, ``/healthz``, ``/readyz``), everything else proxied."""

    async def handle(request: Request) -> Response:
        path = request.raw_path
        if path.startswith(app.admin_prefix) or path.split("?", 1)[0] == "/outcomes":
            return await admin.handle_admin(app, request)
        if path in OPS_PATHS:
            return await admin.handle_ops(app, request, path)
        try:
            return await handle_proxy(app, request)
        except Exception as exc:  # pragma: no cover - last line of defence, logged loudly
            log.exception("unexpected error while proxying")
            app.metrics.inc("router_rejected_requests", ("internal_error",))
            return json_error(500, "internal router error", detail=type(exc).__name__)

    return handle
