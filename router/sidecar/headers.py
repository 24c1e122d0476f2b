"""What crosses the proxy: which headers are forwarded, dropped and added, and the request id.

Forwarded to the upstream: the client's headers without hop-by-hop ones (and without a
client-supplied shadow marker: only the router marks shadows), plus ``X-Forwarded-*`` and the
request id. Answered to the client: the upstream's headers without hop-by-hop ones, plus
``X-Request-Id`` and ``X-Router-Variant`` (replacing any the upstream set).

The request id is the client's ``X-Request-Id`` when it is 1-128 visible ASCII characters
(``!`` to ``~``, no spaces, one header); otherwise (missing, empty, too long, two of them,
control or non-ASCII bytes) the router generates one, forwards it instead of the client's and
counts ``router_request_ids_replaced_total{reason}``.
"""

from __future__ import annotations

import itertools
import os

from router.sidecar.http_messages import Request, Response
from router.sidecar.upstream_types import UpstreamResponse

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",  # recomputed from the body we forward
    }
)

# what the router sets on every answer: the upstream's own values are dropped
ROUTER_RESPONSE_HEADERS = frozenset({b"x-request-id", b"x-router-variant", b"x-router-fallback"})
MAX_REQUEST_ID = 128

_ID_PREFIX = os.urandom(5).hex()
_ids = itertools.count(1)


def _reseed_ids() -> None:
    """Forked workers must not share the parent's prefix (their ids would collide)."""
    global _ID_PREFIX, _ids
    _ID_PREFIX = os.urandom(5).hex()
    _ids = itertools.count(1)


os.register_at_fork(after_in_child=_reseed_ids)


def new_request_id() -> str:
    """Unique across processes and restarts: random per-process prefix + counter."""
    return f"{_ID_PREFIX}{next(_ids):08x}"


def valid_request_id(value: str) -> bool:
    """1-128 visible ASCII characters (RFC 9110 VCHAR: no spaces, so two X-Request-Id headers,
    which the server joins with ", ", are refused too)."""
    return (
        0 < len(value) <= MAX_REQUEST_ID
        and value.isascii()
        and value.isprintable()
        and " " not in value
    )


def forward_headers(
    request: Request, request_id: str, keep_id: bool, drop: frozenset[bytes] = HOP_BY_HOP
) -> list[tuple[bytes, bytes]]:
    """Request headers for the upstream: ``drop`` (hop-by-hop, and the app adds the shadow
    marker) removed, X-Forwarded-* added, and X-Request-Id: the client's when ``keep_id``, else
    ``request_id`` in its place."""
    out: list[tuple[bytes, bytes]] = []
    extra_hop: set[bytes] = set()
    xff: bytes | None = None
    has_proto = False
    has_host = False
    if not keep_id and b"x-request-id" not in drop:
        drop = drop | _REQUEST_ID  # (the app passes a set that already has it: no work here)
    for k, v in request.raw_headers:
        lk = k.lower()
        if lk in drop:
            if lk == b"connection":
                extra_hop.update(t.strip().lower() for t in v.split(b","))
            continue
        if lk == b"x-forwarded-for":
            xff = v if xff is None else xff + b", " + v
            continue
        if lk == b"x-forwarded-proto":
            has_proto = True
        elif lk == b"host":
            has_host = True
        out.append((k, v))
    if extra_hop:
        out = [(k, v) for k, v in out if k.lower() not in extra_hop]
    ip = request.peer.encode()
    out.append((b"X-Forwarded-For", xff + b", " + ip if xff else ip))
    if not has_proto:
        out.append((b"X-Forwarded-Proto", b"http"))
    if not keep_id:
        out.append((b"X-Request-Id", request_id.encode()))
    if not has_host:
        out.append((b"Host", b"localhost"))
    return out


_REQUEST_ID = frozenset({b"x-request-id"})
# the server frames the body itself; our own headers replace the upstream's
_RESP_HOP = (HOP_BY_HOP - {b"content-length"}) | ROUTER_RESPONSE_HEADERS


def client_response(
    resp: UpstreamResponse, request_id: str, variant: str, fallback: str | None
) -> Response:
    """The upstream's answer, unchanged but for hop-by-hop headers, plus our two headers (which
    replace any the upstream set: one id and one variant per answer)."""
    headers = [(k, v) for k, v in resp.headers if k.lower() not in _RESP_HOP]
    headers.append((b"X-Request-Id", request_id.encode()))
    headers.append((b"X-Router-Variant", variant.encode()))
    if fallback:
        headers.append((b"X-Router-Fallback", fallback.encode()))
    return Response(resp.status, resp.body, headers, resp.reason or None)
