"""Property-based fuzzing of the sidecar's request parsing and framing (issue 12), end to end:
random requests (request lines, headers, Content-Length or chunked bodies with random chunk
sizes and trailers, pipelined, sometimes with a stray byte inserted) are written to a real
router in pieces split at random byte boundaries, and a real upstream parses what reaches it.

Properties:

- every input yields well-formed answers (one per request, in order, each framed by
  Content-Length) and then a close: nothing hangs, nothing is half-written;
- an answer is either the upstream's (200) or the router's own JSON error, and an error is the
  last answer on its connection;
- what reaches the upstream is always one request per proxied answer, framed by Content-Length
  (never chunked, never with trailers, never with a client's shadow marker), carrying exactly
  the body the client meant when the client's request was well-formed.

The default run is CI-sized (a few seconds); ``ROUTER_FULL_SIM=1`` runs 20x more examples.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httptools
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import InProcessRouter, config_dict, make_config

FULL = os.environ.get("ROUTER_FULL_SIM") == "1"
EXAMPLES = 2000 if FULL else 100
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=not FULL,
)
ERRORS = {400, 408, 413, 414, 431, 505}


# ---- the real upstream: parses its input with llhttp and records every request ----------------
@dataclass
class Seen:
    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    chunked: bool
    trailers: list[tuple[bytes, bytes]]


@dataclass
class UpstreamLog:
    requests: list[Seen] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class Upstream(asyncio.Protocol):
    def __init__(self, log: UpstreamLog) -> None:
        self.log = log
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.trailers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.done_headers = False
        self.chunked = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.log.errors.append(f"upstream could not parse what it got: {exc!r}")
            assert self.transport is not None
            self.transport.close()

    def on_message_begin(self) -> None:
        self._reset()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        (self.trailers if self.done_headers else self.headers).append((name, value))

    def on_headers_complete(self) -> None:
        self.done_headers = True

    def on_chunk_header(self) -> None:
        self.chunked = True

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        self.log.requests.append(
            Seen(method, self.url, self.headers, self.body, self.chunked, self.trailers)
        )
        seq = next((v for k, v in self.headers if k.lower() == b"x-seq"), b"")
        doc = orjson.dumps({"seq": seq.decode("latin-1"), "body": self.body.decode("latin-1")})
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        assert self.transport is not None
        self.transport.write(head % len(doc) + (b"" if method == b"HEAD" else doc))


class Harness:
    """The router and the upstream on an event loop in a background thread."""

    def __init__(self, tmp: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.log = UpstreamLog()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.tmp = tmp
        self.router: InProcessRouter | None = None
        self.run(self._start())

    def run(self, coro: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        self.upstream = await loop.create_server(lambda: Upstream(self.log), "127.0.0.1", 0)
        url = f"http://127.0.0.1:{self.upstream.sockets[0].getsockname()[1]}"
        d = config_dict(url, url, None, tmp=self.tmp, fallback="none")
        d["limits"].update(
            max_body=4096, header_timeout_s=0.3, body_timeout_s=0.3, max_header_bytes=8192,
            max_request_line=2048, max_headers=20,
        )  # fmt: skip
        d["guard"]["enabled"] = False
        self.router = InProcessRouter(make_config(d), self.tmp / "run", None)
        await self.router.__aenter__()

    async def _stop(self) -> None:
        assert self.router is not None
        await self.router.__aexit__(None, None, None)
        self.upstream.close()

    def close(self) -> None:
        self.run(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    async def exchange(self, pieces: list[bytes]) -> bytes:
        """Write ``pieces`` one at a time (each read by the router on its own), then read until
        the router closes the connection."""
        assert self.router is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", self.router.port)
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            for _ in range(3):
                await asyncio.sleep(0)
        try:
            return await asyncio.wait_for(reader.read(), 5.0)
        finally:
            writer.close()


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    h = Harness(tmp_path_factory.mktemp("fuzz"))
    yield h
    h.close()


# ---- requests ---------------------------------------------------------------------------------
@dataclass
class Req:
    raw: bytes
    seq: str
    body: bytes  # what the client meant to send
    head: bool  # a HEAD request (its answer has no body)
    valid: bool  # well-formed by construction (no stray byte, consistent framing)


token = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_", min_size=1,
                max_size=12)  # fmt: skip
value = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)


@st.composite
def requests(draw: st.DrawFn, seq: str) -> Req:
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]))
    target = draw(st.sampled_from(["/p", "/p?a=1&b=%20", "/a/b/c", "http://model.example:81/x?y",
                                   "/" + "u" * 3000]))  # fmt: skip
    version = draw(st.sampled_from(["HTTP/1.1"] * 6 + ["HTTP/1.0", "HTTP/2.0", "HTTP/1.2"]))
    hosts = draw(st.sampled_from([1] * 8 + [0, 2]))
    framing = draw(st.sampled_from(["none", "length", "length", "chunked", "chunked", "both"]))
    body = draw(st.binary(max_size=5000)) if framing != "none" else b""
    extra = draw(st.lists(st.tuples(token, value), max_size=25))
    headers = [("Host", f"h{i}") for i in range(hosts)] + [("X-Seq", seq)] + extra
    headers += draw(st.sampled_from([[], [("X-Shadow-Request", "1")], [("X-Request-Id", "")],
                                     [("Expect", "100-continue")], [("Connection", "close")],
                                     [("Transfer-Encoding", "gzip, chunked")]]))  # fmt: skip
    chunks: list[bytes] = []
    trailers: list[tuple[str, str]] = []
    if framing in ("length", "both"):
        headers.append(("Content-Length", str(len(body))))
    if framing in ("chunked", "both"):
        headers.append(("Transfer-Encoding", "chunked"))
        cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=6)))
        edges = [0, *cuts, len(body)]
        chunks = [body[a:b] for a, b in itertools.pairwise(edges) if b > a]
        trailers = draw(st.lists(st.tuples(token, value), max_size=3))
    lines = [f"{method} {target} {version}".encode()]
    lines += [f"{k}: {v}".encode() for k, v in headers]
    raw = b"\r\n".join(lines) + b"\r\n\r\n"
    if framing in ("chunked", "both"):
        for c in chunks:
            ext = draw(st.sampled_from([b"", b";ext=1"]))
            raw += b"%x%s\r\n%s\r\n" % (len(c), ext, c)
        raw += b"0\r\n" + b"".join(f"{k}: {v}\r\n".encode() for k, v in trailers) + b"\r\n"
    elif framing == "length":
        raw += body
    valid = True
    if draw(st.integers(0, 9)) == 0:  # a stray byte somewhere
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + draw(st.sampled_from([b"\x00", b"\r", b"\n", b" ", b":", b"0", b"\x7f",
                                               b"\xff"])) + raw[at:]  # fmt: skip
        valid = False
    if framing == "both" or any(k.lower() == "transfer-encoding" for k, _ in headers[:-1]):
        valid = False  # the router must refuse these; what matters is that it does so cleanly
    return Req(raw, seq, body, method == "HEAD", valid)


@dataclass
class Answer:
    status: int
    headers: dict[bytes, bytes]
    body: bytes


def parse_answers(raw: bytes, heads: list[bool]) -> list[Answer]:
    """The answers in ``raw`` (1xx skipped), parsed with llhttp; fails on anything malformed or
    not framed by Content-Length. ``heads[i]``: the i-th request was a HEAD."""
    out: list[Answer] = []

    class P:
        def __init__(self) -> None:
            self.headers: dict[bytes, bytes] = {}
            self.body = b""

        def on_message_begin(self) -> None:
            self.headers, self.body = {}, b""

        def on_header(self, k: bytes, v: bytes) -> None:
            assert k.lower() not in self.headers or k.lower() == b"set-cookie", k
            self.headers[k.lower()] = v

        def on_body(self, b: bytes) -> None:
            self.body += b

        def on_message_complete(self) -> None:
            status = parser.get_status_code()
            if status >= 200:
                out.append(Answer(status, self.headers, self.body))

    proto = P()
    pos = 0
    while pos < len(raw):
        parser = httptools.HttpResponseParser(proto)
        # one answer at a time: a HEAD answer announces a body it does not carry
        head_end = raw.index(b"\r\n\r\n", pos) + 4
        status = int(raw[pos:head_end].split(b" ", 2)[1])
        if status < 200:
            pos = head_end
            continue
        # (the router's own errors always carry their JSON body)
        is_head = status == 200 and len(out) < len(heads) and heads[len(out)]
        headers = dict(
            (k.strip().lower(), v.strip())
            for k, _, v in (x.partition(b":") for x in raw[pos:head_end].split(b"\r\n")[1:-2])
        )
        assert b"transfer-encoding" not in headers, headers
        length = 0 if is_head else int(headers[b"content-length"])
        parser.feed_data(raw[pos:head_end] if is_head else raw[pos : head_end + length])
        if is_head:
            out.append(Answer(status, headers, b""))
        pos = head_end + length
        assert len(out) and pos <= len(raw), "truncated answer"
    return out


def check(harness: Harness, reqs: list[Req], splits: list[int]) -> None:
    stream = b"".join(r.raw for r in reqs)
    cuts = sorted({s for s in splits if 0 < s < len(stream)})
    pieces = [stream[a:b] for a, b in itertools.pairwise([0, *cuts, len(stream)])]
    before = len(harness.log.requests)
    raw = harness.run(harness.exchange(pieces))
    answers = parse_answers(raw, [r.head for r in reqs])
    assert len(answers) <= len(reqs)
    proxied = harness.log.requests[before:]
    assert not harness.log.errors, harness.log.errors
    for i, a in enumerate(answers):
        if a.status != 200:
            assert a.status in ERRORS, a
            assert i == len(answers) - 1 and a.headers[b"connection"] == b"close"
            assert "error" in orjson.loads(a.body)
    ok = [a for a in answers if a.status == 200]
    assert len(proxied) == len(ok)  # one upstream request per proxied answer
    for seen in proxied:
        names = [k.lower() for k, _ in seen.headers]
        assert not seen.chunked and not seen.trailers
        assert b"transfer-encoding" not in names and b"x-shadow-request" not in names
        assert names.count(b"content-length") <= 1 and names.count(b"host") == 1
        if b"content-length" in names:
            assert int(dict(seen.headers)[next(k for k, _ in seen.headers
                                               if k.lower() == b"content-length")]) == len(
                seen.body)  # fmt: skip
        else:
            assert seen.body == b"" and seen.method in (b"GET", b"HEAD")
    # each well-formed request that was answered 200 reached the upstream with its exact body
    by_seq = {r.seq: r for r in reqs}
    for seen in proxied:
        seq = next((v for k, v in seen.headers if k.lower() == b"x-seq"), b"").decode("latin-1")
        r = by_seq.get(seq)
        if r is not None and r.valid:
            assert seen.body == r.body


@FUZZ
@given(data=st.data())
def test_fuzz_every_input_gets_framed_answers_or_a_close(harness: Harness, data: Any) -> None:
    n = data.draw(st.integers(1, 3))
    nonce = os.urandom(4).hex()
    reqs = [data.draw(requests(f"{nonce}-{i}")) for i in range(n)]
    end = Req(b"GET /end HTTP/1.1\r\nHost: h\r\nX-Seq: %s-end\r\nConnection: close\r\n\r\n"
              % nonce.encode(), f"{nonce}-end", b"", False, True)  # fmt: skip
    reqs.append(end)
    total = sum(len(r.raw) for r in reqs)
    splits = data.draw(st.lists(st.integers(0, total), max_size=8))
    check(harness, reqs, splits)


def test_pipelined_stream_split_at_every_byte_boundary(harness: Harness) -> None:
    """Three pipelined requests (a Content-Length body, a chunked body with an extension and
    trailers, a GET) split in two at every byte boundary: the same three answers every time."""
    reqs = [
        Req(b"POST /a HTTP/1.1\r\nHost: h\r\nX-Seq: s-1\r\nContent-Length: 5\r\n\r\nhello",
            "s-1", b"hello", False, True),
        Req(b"PUT /b HTTP/1.1\r\nHost: h\r\nX-Seq: s-2\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n", "s-2", b"abcde", False, True),
        Req(b"GET /c HTTP/1.1\r\nHost: h\r\nX-Seq: s-3\r\nConnection: close\r\n\r\n", "s-3", b"",
            False, True),
    ]  # fmt: skip
    total = sum(len(r.raw) for r in reqs)
    for cut in range(1, total):
        before = len(harness.log.requests)
        check(harness, reqs, [cut])
        assert [s.body for s in harness.log.requests[before:]] == [b"hello", b"abcde", b""]
