"""Small local text "models" without weights that answer like an OpenAI-compatible server.

``POST /v1/chat/completions`` with ``{"messages": [...], "stream": bool}`` answers with a chat
completion; streamed, it is a ``text/event-stream`` of ``data: {chunk}`` events, one per token,
``ttft_s`` before the first and ``token_delay_s`` between the others, a last chunk with
``usage`` and ``finish_reason``, then ``data: [DONE]`` (as vLLM and OpenAI send them).

The text is a template generator: a deterministic function of the last user message and the
model's style (``concise`` or ``verbose``), so two styles disagree in a measurable way; a prompt
containing "forbidden" is refused by the ``cautious`` flag. For tests the header ``X-Fault``
makes one answer misbehave: ``malformed`` (a non-JSON event), ``close`` (the connection dropped
mid-stream), ``stall`` (no byte after the first event for ``stall_s``), ``error`` (a 500).
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import time
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

_SUBJECTS = ("the model", "this request", "your data", "the result", "the service")
_VERBS = ("depends on", "improves with", "is shaped by", "reflects", "follows")
_OBJECTS = ("the input", "recent traffic", "careful tuning", "its training", "the context")
REFUSAL = "I'm sorry, but I can't help with that."


@dataclass(frozen=True, slots=True)
class TextModelSpec:
    version: str
    style: str = "concise"  # concise | verbose
    ttft_s: float = 0.05
    token_delay_s: float = 0.01
    cautious: bool = False
    stall_s: float = 5.0


def generate(spec: TextModelSpec, prompt: str) -> str:
    """The answer to ``prompt``: deterministic, style-dependent, no weights."""
    if spec.cautious and "forbidden" in prompt.lower():
        return REFUSAL
    h = hashlib.sha256(prompt.encode()).digest()
    sentences = []
    for i in range(2 if spec.style == "concise" else 4):
        a, b, c = h[3 * i] % 5, h[3 * i + 1] % 5, h[3 * i + 2] % 5
        sentences.append(f"{_SUBJECTS[a].capitalize()} {_VERBS[b]} {_OBJECTS[c]}.")
    text = " ".join(sentences)
    if spec.style == "verbose":
        text = f"Great question! {text} Let me know if you need more detail."
    return text


def tokens(text: str) -> list[str]:
    """Word-level "tokens" that concatenate back to ``text``."""
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def _last_user_message(doc: Any) -> str:
    msgs = doc.get("messages") if isinstance(doc, dict) else None
    if isinstance(msgs, list):
        for m in reversed(msgs):
            if isinstance(m, dict) and m.get("role") == "user":
                return str(m.get("content", ""))
    prompt = doc.get("prompt") if isinstance(doc, dict) else None
    return str(prompt or "")


def _chunk(spec: TextModelSpec, cid: str, delta: dict[str, Any], finish: str | None) -> bytes:
    doc = {
        "id": cid,
        "object": "chat.completion.chunk",
        "model": spec.version,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(doc) + b"\n\n"


def make_llm_app(spec: TextModelSpec) -> web.Application:
    async def chat(request: web.Request) -> web.StreamResponse:
        try:
            doc = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return web.json_response({"error": {"message": "bad JSON"}}, status=400)
        fault = request.headers.get("X-Fault", "")
        if fault == "error":
            return web.json_response({"error": {"message": "model failure"}}, status=500)
        prompt = _last_user_message(doc)
        text = generate(spec, prompt)
        toks = tokens(text)
        usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": len(toks),
                 "total_tokens": len(prompt.split()) + len(toks)}  # fmt: skip
        cid = "chatcmpl-" + hashlib.sha256(prompt.encode()).hexdigest()[:12]
        if not (isinstance(doc, dict) and doc.get("stream")):
            await asyncio.sleep(spec.ttft_s + spec.token_delay_s * (len(toks) - 1))
            body = {
                "id": cid,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": spec.version,
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": text}}],
                "usage": usage,
            }  # fmt: skip
            return web.Response(body=orjson.dumps(body), content_type="application/json")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})  # fmt: skip
        await resp.prepare(request)
        await asyncio.sleep(spec.ttft_s)
        await resp.write(_chunk(spec, cid, {"role": "assistant", "content": ""}, None))
        for i, tok in enumerate(toks):
            if i:
                await asyncio.sleep(spec.token_delay_s)
            if fault == "stall" and i == 1:
                await asyncio.sleep(spec.stall_s)
            if fault == "malformed" and i == 1:
                await resp.write(b"data: {not json\n\n")
            if fault == "close" and i == len(toks) // 2:
                assert request.transport is not None
                request.transport.abort()
                return resp
            await resp.write(_chunk(spec, cid, {"content": tok}, None))
        last = orjson.loads(_chunk(spec, cid, {}, "stop")[6:])
        last["usage"] = usage
        await resp.write(b"data: " + orjson.dumps(last) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "model": spec.version})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/healthz", healthz)
    return app


class TextModelServer:
    """Run a text model on 127.0.0.1 inside the current event loop (TLS with ``ssl``)."""

    def __init__(
        self, spec: TextModelSpec, port: int = 0, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.spec = spec
        self.port = port
        self.ssl_context = ssl_context
        self.runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    async def start(self) -> TextModelServer:
        self.runner = web.AppRunner(make_llm_app(self.spec), access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", self.port, ssl_context=self.ssl_context)
        await site.start()
        self.port = int(self.runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
