"""Writing a streamed answer (``Response.stream``) to the client: the relay half of
:class:`~router.sidecar.http_protocol.HttpProtocol`, kept apart so each module reads top to
bottom.

The head is written at once; then the connection is the stream's sink
(:class:`~router.sidecar.upstream_stream.StreamSink`): each upstream read is written as it
comes, chunk-framed for HTTP/1.1 clients unless the upstream gave a Content-Length,
close-delimited for HTTP/1.0 ones. The protocol's ``pause_writing`` / ``resume_writing`` pause and
resume the stream (its upstream is not read meanwhile); ``connection_lost`` aborts it. A stream
that ends incomplete closes the connection without the final chunk.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from router.sidecar.http_messages import Response, encode_stream_head

if TYPE_CHECKING:
    from router.sidecar.upstream_stream import BodyStream


class StreamRelay:
    """Mixed into :class:`~router.sidecar.http_protocol.HttpProtocol` (which has the slots)."""

    __slots__ = ("_chunked", "_stream")

    _stream: BodyStream | None  # the answer being relayed
    _chunked: bool  # its body is chunk-framed

    if TYPE_CHECKING:
        transport: asyncio.Transport | None
        _write_paused: bool

        def _after_relay(self, ok: bool, keep_alive: bool) -> None: ...

    async def _relay(
        self, resp: Response, stream: BodyStream, head: bool, keep_alive: bool, http10: bool
    ) -> None:
        """Write a streamed answer's head now and its body as it arrives."""
        transport = self.transport
        if transport is None or transport.is_closing():
            stream.abort("client_aborted")
            return
        if stream.length < 0 and http10:
            keep_alive = False  # a close-delimited body
        data, self._chunked = encode_stream_head(resp, stream.length, keep_alive, http10)
        transport.write(data)
        if head:  # (the proxy never streams a HEAD answer; defensive)
            stream.abort("head")
            ok = True
        else:
            self._stream = stream
            if self._write_paused:
                stream.pause()
            stream.attach(self)
            ok = await stream.wait()
            self._stream = None
        self._after_relay(ok, keep_alive)

    # ---- StreamSink (the stream of the answer being relayed) -----------------------------
    def stream_data(self, data: bytes) -> None:
        t = self.transport
        if t is None or not data:
            return
        if self._chunked:
            t.write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            t.write(data)

    def stream_end(self, ok: bool) -> None:
        t = self.transport
        if ok and self._chunked and t is not None:
            t.write(b"0\r\n\r\n")
