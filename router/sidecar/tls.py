"""TLS contexts: to ``https://`` upstreams (verification on by default, a CA bundle, mTLS) and on
the listener (``listen_tls``). Built once per worker and shared by every connection of a pool, so
keep-alive TLS connections are pooled like plain ones."""

from __future__ import annotations

import ssl

from router.config import ListenTLS, UpstreamTLS


def client_context(tls: UpstreamTLS) -> ssl.SSLContext:
    """The context of one upstream's pools: the system's CAs (or ``ca_bundle``), hostname and
    chain checked unless ``verify`` is false, a client certificate when given, HTTP/1.1 ALPN."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.ca_bundle)
    if not tls.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if tls.client_cert:
        ctx.load_cert_chain(tls.client_cert, tls.client_key)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def server_context(tls: ListenTLS) -> ssl.SSLContext:
    """The listener's context (TLS 1.2 or later, HTTP/1.1 ALPN)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tls.cert, tls.key)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx
