"""The bounds of the sidecar's HTTP server (``limits.*`` of the router config).

Every refusal is reported through the server's ``on_refused(status, reason)``:

- the request line (414 over ``max_request_line``), the head: request line + header lines
  (431 over ``max_header_bytes`` or ``max_headers``). Bytes are counted as they are fed to the
  parser, and a read that would take a head past the limit is fed only up to the limit, so an
  unfinished head never holds more than ``max_header_bytes`` (a head that begins inside the same
  read as the end of the previous pipelined request: at most twice that). A chunked body's
  framing (chunk-size lines, extensions) and trailers count against the same limit.
- a body over ``max_body``: 413, before it is read when declared, as soon as it exceeds it when
  chunked.
- timeouts, checked by one sweep per server (no timer per request): ``header_timeout`` from
  accept (or from the first byte of a later request) to the end of the head (408, or a silent
  close when nothing was sent); ``body_timeout`` between two reads of a body (408);
  ``keepalive_timeout`` for an idle keep-alive connection (closed); ``send_timeout`` for a client
  that reads none of its answers (aborted).
- ``max_connections`` per server: a connection beyond it is answered 503 and closed at once.
- write backpressure: while a connection's write buffer is above ``write_buffer_high`` (the
  transport's high-water mark; low-water is half of it) reading from that client stops and no
  further pipelined request is started; both resume below the low-water mark.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """Per-connection and per-server bounds (``limits.*`` of the router config)."""

    max_body: int = 1024 * 1024
    max_request_line: int = 8 * 1024
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    header_timeout: float = 30.0
    body_timeout: float = 60.0
    keepalive_timeout: float = 75.0
    send_timeout: float = 60.0
    max_connections: int = 1024
    write_buffer_high: int = 1024 * 1024
