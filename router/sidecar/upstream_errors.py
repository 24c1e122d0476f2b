"""The failures of an exchange with an upstream (the proxy maps them to 502 / 504 and counts them
by kind). Re-exported by :mod:`router.sidecar.upstream_types`."""

from __future__ import annotations


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


class UpstreamTLSError(UpstreamConnectError):
    """The TLS handshake failed: the certificate was not trusted, did not match the name, or
    the upstream refused ours."""


class UpstreamNotRetriedError(UpstreamProtocolError):
    """A non-idempotent request was lost on a reused connection after it was written: the
    upstream may have read it, so it is not sent again."""
