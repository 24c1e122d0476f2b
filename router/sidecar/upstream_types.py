"""What an exchange with an upstream gives back: an :class:`UpstreamResponse`, or an
:class:`UpstreamError` subclass (the proxy maps them to 502 / 504 and counts them by kind)."""

from __future__ import annotations

from dataclasses import dataclass


class UpstreamError(Exception):
    """Any failure talking to the upstream; ``upstream`` is ``"host:port"``."""

    upstream: str

    def __init__(self, message: str, upstream: str = "") -> None:
        super().__init__(f"{message} ({upstream})" if upstream else message)
        self.upstream = upstream


class UpstreamConnectError(UpstreamError):
    """Connection refused, name resolution failed or the connect timed out."""


class UpstreamTimeout(UpstreamError):
    """The exchange (slot wait + connect + write + full read) exceeded its timeout."""


class UpstreamProtocolError(UpstreamError):
    """Malformed response, or the connection was lost before the response was complete."""


class UpstreamNotRetriedError(UpstreamProtocolError):
    """A non-idempotent request was lost on a reused connection after it was written: the
    upstream may have read it, so it is not sent again."""


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
