"""Text predictions of OpenAI-compatible answers (pure; no I/O; off the hot path).

:func:`openai_text` reassembles the generated text of a chat/completions answer, as vLLM, TGI,
llama.cpp, Ollama and OpenAI serve them:

* not streamed: ``choices[0].message.content`` (chat) or ``choices[0].text`` (completions);
* streamed as server-sent events: ``data: {json}`` events whose ``choices[0].delta.content``
  (chat) or ``choices[0].text`` (completions) are concatenated, up to ``data: [DONE]``.

``usage`` (``prompt_tokens``, ``completion_tokens``, ``total_tokens``) is taken when the answer
carries it (the last chunk of a stream with ``stream_options.include_usage``), and
``finish_reason`` of the first choice. Anything the parser cannot read is reported in
``error`` (the record's ``parse_error``), never raised: the client got the answer unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

_SSE_STARTS = (b"data:", b"event:", b"id:", b"retry:", b":")
_USAGE_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens")


@dataclass(slots=True)
class TextAnswer:
    text: str | None = None
    usage: dict[str, int] | None = None
    finish_reason: str | None = None
    error: str | None = None
    streamed: bool = False


def is_event_stream(body: bytes) -> bool:
    return body.lstrip()[:6].startswith(_SSE_STARTS)


def sse_data(body: bytes) -> tuple[list[str], bool]:
    """The ``data`` of each event of an event stream (multi-line data joined with ``\\n``, as
    the WHATWG algorithm does), and whether the last event was terminated by a blank line."""
    out: list[str] = []
    lines: list[str] = []
    text = body.decode("utf-8", errors="replace")
    raw = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    ended = raw[-1] == "" and (len(raw) < 2 or raw[-2] == "")
    for line in raw:
        if line == "":
            if lines:
                out.append("\n".join(lines))
                lines = []
            continue
        if line.startswith(":"):
            continue  # a comment (keep-alive)
        name, _, value = line.partition(":")
        if name == "data":
            lines.append(value[1:] if value.startswith(" ") else value)
    if lines:
        out.append("\n".join(lines))
        ended = False
    return out, ended


def _usage(doc: Any) -> dict[str, int] | None:
    u = doc.get("usage") if isinstance(doc, dict) else None
    if not isinstance(u, dict):
        return None
    out = {k: int(u[k]) for k in _USAGE_KEYS if isinstance(u.get(k), (int, float))}
    return out or None


def _first_choice(doc: Any) -> dict[str, Any] | None:
    choices = doc.get("choices") if isinstance(doc, dict) else None
    if not isinstance(choices, list) or not choices:
        return None
    for c in choices:  # choice 0 (n > 1 answers interleave their choices in a stream)
        if isinstance(c, dict) and c.get("index", 0) == 0:
            return c
    return None


def _error_message(doc: Any) -> str | None:
    err = doc.get("error") if isinstance(doc, dict) else None
    if err is None:
        return None
    if isinstance(err, dict):
        return str(err.get("message") or err.get("type") or err)[:200]
    return str(err)[:200]


def openai_text(body: bytes | None, truncated: bool = False) -> TextAnswer:
    """The text of an OpenAI-compatible answer (see the module docstring)."""
    if not body:
        return TextAnswer(error="empty body")
    if is_event_stream(body):
        return _from_stream(body, truncated)
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return TextAnswer(error="truncated" if truncated else "not JSON")
    ans = TextAnswer(usage=_usage(doc))
    msg = _error_message(doc)
    choice = _first_choice(doc)
    if choice is None:
        ans.error = f"error: {msg}" if msg else "no choices"
        return ans
    message = choice.get("message")
    if isinstance(message, dict):
        content = message.get("content")
        ans.text = content if isinstance(content, str) else ("" if content is None else None)
    elif isinstance(choice.get("text"), str):
        ans.text = choice["text"]
    if ans.text is None:
        ans.error = "choices[0] has no message.content or text"
    fr = choice.get("finish_reason")
    ans.finish_reason = fr if isinstance(fr, str) else None
    return ans


def _from_stream(body: bytes, truncated: bool) -> TextAnswer:
    ans = TextAnswer(streamed=True)
    events, ended = sse_data(body)
    parts: list[str] = []
    done = False
    problem: str | None = None
    for i, data in enumerate(events):
        if data.strip() == "[DONE]":
            done = True
            break
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError:
            if i == len(events) - 1 and (truncated or not ended):
                break  # the cut-off last event of a truncated or interrupted stream
            problem = problem or f"event {i}: not JSON"
            continue
        msg = _error_message(doc)
        if msg is not None:
            problem = problem or f"event {i}: error: {msg}"
        usage = _usage(doc)
        if usage is not None:
            ans.usage = usage
        choice = _first_choice(doc)
        if choice is None:
            continue
        delta = choice.get("delta")
        piece = delta.get("content") if isinstance(delta, dict) else choice.get("text")
        if isinstance(piece, str):
            parts.append(piece)
        fr = choice.get("finish_reason")
        if isinstance(fr, str):
            ans.finish_reason = fr
    ans.text = "".join(parts)
    if problem is not None:
        ans.error = problem
    elif truncated:
        ans.error = "truncated"
    elif not done:
        ans.error = "stream ended without [DONE]"
    return ans
