"""HTTP/1.1 messages of the sidecar's server: :class:`Request`, :class:`Response`, their encoding.

Pure (no I/O): the parsed request a handler receives, the response it returns, the one-buffer
encoding of a response (``Content-Length`` from the body, ``Date`` when absent, ``Connection``
as needed; HEAD, 1xx, 204 and 304 carry no body), the JSON error answers, and the absolute-form
to origin-form rewrite of a request target. :mod:`router.sidecar.http_protocol` produces the
requests and writes the responses.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import orjson

if TYPE_CHECKING:
    from router.sidecar.upstream_stream import BodyStream

_NO_BODY_STATUS = frozenset({204, 304})
_REASONS: dict[int, bytes] = {}


def _reason(status: int) -> bytes:
    r = _REASONS.get(status)
    if r is None:
        from http import HTTPStatus

        try:
            r = HTTPStatus(status).phrase.encode()
        except ValueError:
            r = b"Unknown"
        _REASONS[status] = r
    return r


class _DateCache:
    __slots__ = ("second", "value")

    def __init__(self) -> None:
        self.second = -1
        self.value = b""

    def get(self) -> bytes:
        now = int(time.time())
        if now != self.second:
            self.second = now
            self.value = email.utils.formatdate(now, usegmt=True).encode()
        return self.value


_date = _DateCache()


class Request:
    """One parsed request. ``headers`` maps lower-case names to values (repeats joined ``, ``);
    ``raw_headers`` keeps every header as received, in order."""

    __slots__ = (
        "_query",
        "body",
        "headers",
        "method",
        "peer",
        "raw_headers",
        "raw_path",
        "transport",
        "version",
    )

    def __init__(
        self,
        method: str,
        raw_path: str,
        version: str,
        raw_headers: list[tuple[bytes, bytes]],
        body: bytes,
        peer: str,
        transport: asyncio.BaseTransport | None,
    ) -> None:
        self.method = method
        self.raw_path = raw_path
        self.version = version
        self.raw_headers = raw_headers
        self.body = body
        self.peer = peer
        self.transport = transport
        headers: dict[str, str] = {}
        for k, v in raw_headers:
            name = k.decode("latin-1").lower()
            value = v.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        self.headers = headers
        self._query: dict[str, str] | None = None

    def header(self, name: str) -> str | None:
        """Header value by case-insensitive name."""
        return self.headers.get(name.lower())

    @property
    def path(self) -> str:
        return self.raw_path.split("?", 1)[0]

    @property
    def query(self) -> dict[str, str]:
        if self._query is None:
            qs = self.raw_path.partition("?")[2]
            self._query = dict(parse_qsl(qs, keep_blank_values=True))
        return self._query

    @property
    def host(self) -> str:
        return self.headers.get("host", "")


class Response:
    """A complete response. ``headers`` are raw ``(name, value)`` byte pairs; the server adds
    Content-Length (from the body, unless a HEAD answer carries its own), Date when absent, and
    Connection as needed.

    With ``stream`` set, ``body`` is ignored: the server writes the head at once and then passes
    the stream's bytes on as they arrive (see :func:`encode_stream_head`)."""

    __slots__ = ("body", "headers", "reason", "status", "stream")

    def __init__(
        self,
        status: int = 200,
        body: bytes = b"",
        headers: list[tuple[bytes, bytes]] | None = None,
        reason: bytes | None = None,
    ) -> None:
        self.status = status
        self.body = body
        self.headers = headers if headers is not None else []
        self.reason = reason
        self.stream: BodyStream | None = None

    def header(self, name: str) -> str | None:
        lname = name.lower().encode()
        for k, v in self.headers:
            if k.lower() == lname:
                return v.decode("latin-1")
        return None


def json_response(data: Any, status: int = 200) -> Response:
    return Response(
        status,
        orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS),
        [(b"Content-Type", b"application/json")],
    )


def json_error(status: int, error: str, **extra: object) -> Response:
    return json_response({"error": error, **extra}, status)


Handler = Callable[[Request], Awaitable[Response]]


def encode_response(resp: Response, head: bool, keep_alive: bool, http10: bool) -> bytes:
    status = resp.status
    parts = [
        b"HTTP/1.1 ", str(status).encode(), b" ", resp.reason or _reason(status), b"\r\n"
    ]  # fmt: skip
    has_date = False
    has_length = False
    for k, v in resp.headers:
        lk = k.lower()
        if lk == b"content-length":
            if not head:
                continue  # recomputed from the body we send
            has_length = True
        elif lk == b"date":
            has_date = True
        elif lk in (b"connection", b"transfer-encoding", b"keep-alive"):
            continue
        parts += (k, b": ", v, b"\r\n")
    if not has_date:
        parts += (b"Date: ", _date.get(), b"\r\n")
    no_body = status in _NO_BODY_STATUS or status < 200
    if not no_body and not has_length:
        parts += (b"Content-Length: ", str(len(resp.body)).encode(), b"\r\n")
    if not keep_alive:
        parts.append(b"Connection: close\r\n")
    elif http10:
        parts.append(b"Connection: keep-alive\r\n")
    parts.append(b"\r\n")
    if not head and not no_body and resp.body:
        parts.append(resp.body)
    return b"".join(parts)


def encode_stream_head(
    resp: Response, length: int, keep_alive: bool, http10: bool
) -> tuple[bytes, bool]:
    """The head of a streamed answer and whether its body is sent chunked.

    The upstream's Content-Length is kept when it had one (``length`` >= 0: the bytes pass
    through as they are); otherwise HTTP/1.1 clients get ``Transfer-Encoding: chunked`` and
    HTTP/1.0 clients a close-delimited body (``keep_alive`` must then be False)."""
    status = resp.status
    parts = [
        b"HTTP/1.1 ", str(status).encode(), b" ", resp.reason or _reason(status), b"\r\n"
    ]  # fmt: skip
    has_date = False
    for k, v in resp.headers:
        lk = k.lower()
        if lk == b"date":
            has_date = True
        elif lk in (b"content-length", b"connection", b"transfer-encoding", b"keep-alive"):
            continue
        parts += (k, b": ", v, b"\r\n")
    if not has_date:
        parts += (b"Date: ", _date.get(), b"\r\n")
    chunked = False
    if length >= 0:
        parts += (b"Content-Length: ", str(length).encode(), b"\r\n")
    elif not http10:
        chunked = True
        parts.append(b"Transfer-Encoding: chunked\r\n")
    if not keep_alive:
        parts.append(b"Connection: close\r\n")
    elif http10:
        parts.append(b"Connection: keep-alive\r\n")
    parts.append(b"\r\n")
    return b"".join(parts), chunked


def error_bytes(status: int, message: str, **extra: Any) -> bytes:
    resp = Response(
        status,
        orjson.dumps({"error": message, **extra}),
        [(b"Content-Type", b"application/json")],
    )
    return encode_response(resp, head=False, keep_alive=False, http10=False)


def origin_form(target: bytes) -> tuple[bytes, bytes] | None:
    """``(origin-form target, authority)`` of an absolute-form ``http(s)://authority/path?q``
    request target, or None when it is not one (RFC 9112 section 3.2.2)."""
    scheme, sep, rest = target.partition(b"://")
    if not sep or scheme.lower() not in (b"http", b"https"):
        return None
    cut = len(rest)
    for ch in (b"/", b"?", b"#"):
        j = rest.find(ch)
        if j != -1 and j < cut:
            cut = j
    authority, path = rest[:cut], rest[cut:].partition(b"#")[0]
    if not authority or b"@" in authority:
        return None
    if not path.startswith(b"/"):
        path = b"/" + path
    return path, authority
