"""Streamed answers through the router, against real SSE model servers and real clients."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import orjson
import pytest
from aiohttp import web

from router.demo.llm import TextModelServer, TextModelSpec, generate
from tests.helpers import (
    InProcessRouter,
    config_dict,
    make_config,
    read_stream,
    start_app,
    wait_for,
)

CHAT = {"messages": [{"role": "user", "content": "how does it work?"}], "stream": True}


def _cfg(champ: str, chall: str, redis_url: str, tmp: Path, **exp: Any) -> dict[str, Any]:
    d = config_dict(champ, chall, redis_url, tmp=tmp, prediction_kind="text",
                    prediction_format="openai", prediction_path=None, **exp)  # fmt: skip
    d["limits"]["mirror_max_body"] = 65536
    return d


@contextlib.asynccontextmanager
async def _llms(
    **kw: Any,
) -> AsyncIterator[tuple[TextModelServer, TextModelServer]]:
    champ = await TextModelServer(TextModelSpec("champ-1", style="concise", **kw)).start()
    chall = await TextModelServer(TextModelSpec("chall-2", style="verbose", **kw)).start()
    try:
        yield champ, chall
    finally:
        await champ.stop()
        await chall.stop()


async def _first_event_and_total(url: str, headers: dict[str, str]) -> tuple[float, float, bytes]:
    """(seconds to the first event, seconds to the end, the body) with httpx streaming."""
    t0 = time.perf_counter()
    first = 0.0
    body = b""
    async with (
        httpx.AsyncClient(timeout=10) as c,
        c.stream("POST", url, json=CHAT, headers=headers) as r,
    ):
        assert r.status_code == 200
        async for chunk in r.aiter_raw():
            if not first and b"data:" in chunk:
                first = time.perf_counter() - t0
            body += chunk
    return first, time.perf_counter() - t0, body


async def test_sse_is_passed_through_as_it_comes(tmp_path: Path, redis_url: str) -> None:
    async with _llms(ttft_s=0.15, token_delay_s=0.1) as (champ, chall):
        cfg = make_config(_cfg(champ.url, chall.url, redis_url, tmp_path))
        async with InProcessRouter(cfg, tmp_path / "run", redis_url) as router:
            path = "/v1/chat/completions"
            direct = await _first_event_and_total(champ.url + path, {})
            routed = await _first_event_and_total(router.url + path, {"X-User-Id": "u1"})
            # the first token reaches the client near the upstream's first token, long before
            # the answer ends (a buffering proxy would give first == total)
            assert routed[1] > 0.5
            assert routed[0] < direct[0] + 0.1 and routed[0] < routed[1] / 3
            assert routed[2] == direct[2]  # byte for byte
            assert await wait_for(lambda: len(read_stream(redis_url, "t:pairs")) == 1)
    (rec,) = read_stream(redis_url, "t:pairs")
    side = rec["champion"]
    text = generate(TextModelSpec("champ-1"), "how does it work?")
    assert side["prediction"] == text and side["streamed"] is True
    assert side["finish_reason"] == "stop" and "parse_error" not in side
    assert side["usage"]["completion_tokens"] == len(text.split(" "))
    assert side["events"] == len(text.split(" ")) + 3  # role, tokens, usage, [DONE]
    assert 100 < side["ttfb_ms"] < side["duration_ms"] and side["bytes"] == len(direct[2])
    assert side["latency_ms"] == side["duration_ms"] and "client_aborted" not in rec


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_curl_sees_the_first_event_before_the_last_is_generated(
    tmp_path: Path, redis_url: str
) -> None:
    async with _llms(ttft_s=0.05, token_delay_s=0.15) as (champ, chall):
        cfg = make_config(_cfg(champ.url, chall.url, redis_url, tmp_path))
        async with InProcessRouter(cfg, tmp_path / "run", redis_url) as router:
            proc = await asyncio.create_subprocess_exec(
                "curl", "-sN", "-X", "POST", "-H", "Content-Type: application/json",
                "--data", orjson.dumps(CHAT).decode(), f"{router.url}/v1/chat/completions",
                stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            assert proc.stdout is not None
            t0 = time.perf_counter()
            first = await asyncio.wait_for(proc.stdout.readline(), 5)
            t_first = time.perf_counter() - t0
            rest = await asyncio.wait_for(proc.stdout.read(), 10)
            t_all = time.perf_counter() - t0
            assert await proc.wait() == 0
    assert first.startswith(b"data: ") and rest.rstrip().endswith(b"data: [DONE]")
    assert t_first < 0.5 < t_all  # 5+ tokens 150 ms apart: the first came well before the end


async def test_client_abort_closes_the_upstream_and_is_recorded(
    tmp_path: Path, redis_url: str
) -> None:
    async with _llms(ttft_s=0.01, token_delay_s=0.2) as (champ, chall):
        cfg = make_config(_cfg(champ.url, chall.url, redis_url, tmp_path))
        async with InProcessRouter(cfg, tmp_path / "run", redis_url) as router:
            async with (
                aiohttp.ClientSession() as s,
                s.post(f"{router.url}/v1/chat/completions", json=CHAT) as r,
            ):
                assert r.status == 200 and r.headers["Transfer-Encoding"] == "chunked"
                await r.content.readline()  # the first event, then leave
                r.close()
            pool = router.app.pools["champion"]
            assert await wait_for(lambda: pool.in_use == 0 and pool.idle == 0)
            assert await wait_for(lambda: len(read_stream(redis_url, "t:pairs")) == 1)
            m = router.app.metrics
            assert m.counter_value("router_streams", ("champion", "served", "client_aborted")) == 1
    (rec,) = read_stream(redis_url, "t:pairs")
    assert rec["client_aborted"] is True and rec["champion"]["streamed"] is True
    assert rec["champion"]["error"] is None


@pytest.mark.parametrize("fault", ["close", "stall"])
async def test_upstream_failing_mid_stream_truncates_the_answer(
    fault: str, tmp_path: Path, redis_url: str
) -> None:
    async with _llms(ttft_s=0.01, token_delay_s=0.01, stall_s=3.0) as (champ, chall):
        d = _cfg(champ.url, chall.url, redis_url, tmp_path)
        d["champion"]["read_timeout"] = 0.4
        cfg = make_config(d)
        async with InProcessRouter(cfg, tmp_path / "run", redis_url) as router:
            got = b""
            with pytest.raises(aiohttp.ClientPayloadError):  # no final chunk: truncated
                async with (
                    aiohttp.ClientSession() as s,
                    s.post(f"{router.url}/v1/chat/completions", json=CHAT,
                           headers={"X-Fault": fault}) as r,
                ):  # fmt: skip
                    assert r.status == 200
                    async for line in r.content:
                        got += line
            assert got.startswith(b"data: ") and b"[DONE]" not in got
            assert await wait_for(lambda: len(read_stream(redis_url, "t:pairs")) == 1)
            kind = "protocol" if fault == "close" else "timeout"
            m = router.app.metrics
            assert m.counter_value("router_upstream_errors", ("champion", "served", kind)) == 1
            assert router.app.pools["champion"].in_use == 0
    (rec,) = read_stream(redis_url, "t:pairs")
    side = rec["champion"]
    assert side["error"].startswith(f"{kind}: mid-stream")
    assert side["parse_error"] == "stream ended without [DONE]"


async def test_malformed_stream_passes_unchanged_and_is_marked(
    tmp_path: Path, redis_url: str
) -> None:
    async with _llms(ttft_s=0.01, token_delay_s=0.0) as (champ, chall):
        cfg = make_config(_cfg(champ.url, chall.url, redis_url, tmp_path))
        async with InProcessRouter(cfg, tmp_path / "run", redis_url) as router:
            path = "/v1/chat/completions"
            fault = {"X-Fault": "malformed"}
            direct = await _first_event_and_total(champ.url + path, fault)
            routed = await _first_event_and_total(router.url + path, fault)
            assert routed[2] == direct[2] and b"data: {not json" in routed[2]
            assert await wait_for(lambda: len(read_stream(redis_url, "t:pairs")) == 1)
    (rec,) = read_stream(redis_url, "t:pairs")
    assert rec["champion"]["parse_error"] == "event 2: not JSON"
    assert rec["champion"]["prediction"] == generate(TextModelSpec("c"), "how does it work?")


async def test_shadow_consumes_a_stream_in_the_background(tmp_path: Path, redis_url: str) -> None:
    async with _llms(ttft_s=0.05, token_delay_s=0.02) as (champ, chall):
        cfg = make_config(_cfg(champ.url, chall.url, redis_url, tmp_path, mirror=1.0))
        async with (
            InProcessRouter(cfg, tmp_path / "run", redis_url) as router,
            aiohttp.ClientSession() as s,
        ):
            async with s.post(f"{router.url}/v1/chat/completions", json=CHAT) as r:
                assert r.status == 200
                await r.read()
            assert await wait_for(lambda: len(read_stream(redis_url, "t:pairs")) == 1)
            m = router.app.metrics
            assert m.counter_value("router_streams", ("challenger", "shadow", "complete")) == 1
            assert router.app.shadow_pools["challenger"].in_use == 0
    (rec,) = read_stream(redis_url, "t:pairs")
    shadow = rec["challenger"]
    assert rec["mirrored"] is True and shadow["streamed"] is True and shadow["error"] is None
    assert shadow["prediction"] == generate(TextModelSpec("x", style="verbose"), CHAT["messages"][0]["content"])  # type: ignore[index]  # noqa: E501
    assert 50 <= shadow["ttfb_ms"] < shadow["duration_ms"] and shadow["events"] > 5
    assert shadow["bytes"] > 0 and rec["champion"]["prediction"] != shadow["prediction"]


async def test_small_content_length_answers_stay_buffered(tmp_path: Path, redis_url: str) -> None:
    async with _llms(ttft_s=0.0, token_delay_s=0.0) as (champ, chall):
        cfg = make_config(_cfg(champ.url, chall.url, redis_url, tmp_path))
        async with (
            InProcessRouter(cfg, tmp_path / "run", redis_url) as router,
            aiohttp.ClientSession() as s,
        ):
            body = {**CHAT, "stream": False}
            async with s.post(f"{router.url}/v1/chat/completions", json=body) as r:
                assert r.status == 200 and "Content-Length" in r.headers
                await r.read()
            assert await wait_for(lambda: len(read_stream(redis_url, "t:pairs")) == 1)
    (rec,) = read_stream(redis_url, "t:pairs")
    side = rec["champion"]
    assert "streamed" not in side and side["bytes"] == int(r.headers["Content-Length"])
    assert side["prediction"] == generate(TextModelSpec("c"), "how does it work?")
    assert side["usage"]["total_tokens"] > 0 and 0 < side["ttfb_ms"] <= side["latency_ms"]
    assert "duration_ms" not in side  # buffered: the duration is latency_ms


async def test_backpressure_bounds_memory_and_loses_nothing(
    tmp_path: Path, redis_url: str
) -> None:
    """A 48 MiB chunked answer to a client that stops reading: the upstream is paused (it can
    write only what the socket buffers and the router's high-water marks hold), then the client
    reads everything, byte for byte."""
    total = 48 * 1024 * 1024
    piece = hashlib.sha256(b"x").digest() * 2048  # 64 KiB
    written = 0

    async def big(request: web.Request) -> web.StreamResponse:
        nonlocal written
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        while written < total:
            await resp.write(piece)
            written += len(piece)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/big", big)
    runner, url = await start_app(app)
    try:
        d = config_dict(url, url, redis_url, tmp=tmp_path)
        d["limits"]["write_buffer_bytes"] = 256 * 1024
        d["champion"]["read_timeout"] = 10.0
        cfg = make_config(d)
        async with InProcessRouter(cfg, tmp_path / "run", redis_url) as router:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", router.port, limit=1024 * 1024
            )
            writer.transport.set_write_buffer_limits(0)
            sock = writer.get_extra_info("socket")
            import socket as _s

            sock.setsockopt(_s.SOL_SOCKET, _s.SO_RCVBUF, 64 * 1024)
            writer.write(b"GET /big HTTP/1.1\r\nHost: r\r\nConnection: close\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            assert b"200 OK" in head and b"chunked" in head.lower()
            reader._transport.pause_reading()  # type: ignore[attr-defined]  # stop reading
            await asyncio.sleep(1.0)
            stalled_at = written
            assert stalled_at < 16 * 1024 * 1024  # paused far below the 48 MiB answer
            assert router.app.metrics.counter_value("router_write_paused") >= 1
            reader._transport.resume_reading()  # type: ignore[attr-defined]
            raw = await asyncio.wait_for(reader.read(), 60)
            writer.close()
    finally:
        await runner.cleanup()
    body = bytearray()
    pos = 0
    while True:
        eol = raw.index(b"\r\n", pos)
        size = int(raw[pos:eol], 16)
        if size == 0:
            break
        body += raw[eol + 2 : eol + 2 + size]
        pos = eol + 2 + size + 2
    assert len(body) == total and body[: len(piece)] == piece
    assert hashlib.sha256(body).digest() == hashlib.sha256(piece * (total // len(piece))).digest()


async def test_noise_floor_repeat_of_a_streamed_answer(tmp_path: Path, redis_url: str) -> None:
    """With the noise floor on, the champion's repeat of a streamed answer is consumed like a
    shadow once the served stream has ended, and the record holds both texts."""
    async with _llms(ttft_s=0.01, token_delay_s=0.005) as (champ, chall):
        cfg = make_config(_cfg(champ.url, chall.url, redis_url, tmp_path, mirror=1.0,
                               noise_floor=1.0))  # fmt: skip
        async with (
            InProcessRouter(cfg, tmp_path / "run", redis_url) as router,
            aiohttp.ClientSession() as s,
        ):
            async with s.post(f"{router.url}/v1/chat/completions", json=CHAT) as r:
                assert r.status == 200
                await r.read()
            assert await wait_for(lambda: len(read_stream(redis_url, "t:pairs")) == 1)
    (rec,) = read_stream(redis_url, "t:pairs")
    text = generate(TextModelSpec("c"), "how does it work?")
    assert rec["champion"]["prediction"] == text and rec["champion"]["streamed"] is True
    assert rec["champion_repeat"]["prediction"] == text
    assert rec["champion_repeat"]["streamed"] is True and rec["champion_repeat"]["events"] > 5
    assert rec["challenger"]["prediction"] != text
