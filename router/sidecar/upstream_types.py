"""What an exchange with an upstream gives back: an :class:`UpstreamResponse`, or an
:class:`UpstreamError` subclass (:mod:`router.sidecar.upstream_errors`; the proxy maps them to
502 / 504 and counts them by kind)."""

from __future__ import annotations

from dataclasses import dataclass

from router.sidecar.upstream_errors import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamNotRetriedError,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamTLSError,
)
from router.sidecar.upstream_stream import BodyStream

__all__ = [
    "BodyStream",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamNotRetriedError",
    "UpstreamProtocolError",
    "UpstreamResponse",
    "UpstreamTLSError",
    "UpstreamTimeout",
]


@dataclass(slots=True)
class UpstreamResponse:
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    keep_alive: bool
    dropped_trailers: int = 0
    truncated: bool = False  # only with max_response_body: body holds the first bytes
    body_bytes: int = -1  # only with max_response_body: the full body size
    first_byte_at: float = 0.0  # time.perf_counter() of the first body byte (0.0: no body)
    # a streamed answer (chunked, close-delimited, an event stream or over the pool's
    # ``stream_over``): ``body`` is empty, the bytes come through the stream, and the connection
    # stays leased until the stream ends
    stream: BodyStream | None = None
