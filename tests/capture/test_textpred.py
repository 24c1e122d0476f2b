"""Reassembling the text of OpenAI-compatible answers (a table of cases)."""

from __future__ import annotations

import orjson
import pytest

from router.capture.records import FinalizeOptions, PendingRecord, Side, finalize
from router.capture.textpred import openai_text, sse_data


def _ev(doc: object) -> bytes:
    return b"data: " + orjson.dumps(doc) + b"\n\n"


def _delta(text: str, finish: str | None = None, index: int = 0) -> bytes:
    return _ev({"choices": [{"index": index, "delta": {"content": text}, "finish_reason": finish}]})


USAGE = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
STREAM = (_delta("") + _delta("Hello") + b": keep-alive\n\n" + _delta(" world", "stop")
          + _ev({"choices": [], "usage": USAGE}) + b"data: [DONE]\n\n")  # fmt: skip

CASES = [
    # (name, body, truncated, text, usage, finish, error)
    ("chat", orjson.dumps({"choices": [{"index": 0, "message": {"content": "Hi"},
                                        "finish_reason": "stop"}], "usage": USAGE}),
     False, "Hi", USAGE, "stop", None),
    ("completions", orjson.dumps({"choices": [{"text": "Yo", "finish_reason": "length"}]}),
     False, "Yo", None, "length", None),
    ("null content (tool call)", orjson.dumps({"choices": [{"message": {"content": None}}]}),
     False, "", None, None, None),
    ("error answer", orjson.dumps({"error": {"message": "overloaded"}}), False, None, None,
     None, "error: overloaded"),
    ("not json", b"<html>", False, None, None, None, "not JSON"),
    ("stream", STREAM, False, "Hello world", USAGE, "stop", None),
    ("crlf stream", STREAM.replace(b"\n", b"\r\n"), False, "Hello world", USAGE, "stop", None),
    ("no DONE", _delta("a") + _delta("b"), False, "ab", None, None,
     "stream ended without [DONE]"),
    ("truncated mid-event", _delta("a") + b'data: {"choi', True, "a", None, None, "truncated"),
    ("malformed event", _delta("a") + b"data: {oops\n\n" + _delta("b") + b"data: [DONE]\n\n",
     False, "ab", None, None, "event 1: not JSON"),
    ("error event", _delta("a") + _ev({"error": {"message": "boom"}}), False, "a", None, None,
     "event 1: error: boom"),
    ("second choice ignored", _delta("a") + _delta("X", index=1) + b"data: [DONE]\n\n", False,
     "a", None, None, None),
    ("completions stream", _ev({"choices": [{"text": "p"}]}) + _ev({"choices": [{"text": "q"}]})
     + b"data: [DONE]\n\n", False, "pq", None, None, None),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_openai_text(case: tuple[object, ...]) -> None:
    _, body, truncated, text, usage, finish, error = case
    ans = openai_text(body, bool(truncated))  # type: ignore[arg-type]
    assert (ans.text, ans.usage, ans.finish_reason, ans.error) == (text, usage, finish, error)


def test_sse_data_joins_multiline_data_and_skips_comments() -> None:
    events, ended = sse_data(b": hi\ndata: a\ndata: b\nid: 1\n\ndata:c\n\n")
    assert events == ["a\nb", "c"] and ended
    assert sse_data(b"data: x")[1] is False


def test_finalize_marks_streams_usage_and_parse_errors() -> None:
    rec = PendingRecord("e", "r1", 1.7e9, "u", 1, "champion", False)
    rec.champion = Side("v1", 200, 12.5, STREAM, ttfb_ms=3.0, duration_ms=12.5,
                        body_bytes=len(STREAM), events=6, streamed=True)  # fmt: skip
    rec.client_aborted = True
    out = finalize(rec, FinalizeOptions(prediction_path=None, prediction_format="openai"))
    side = out["champion"]
    assert side["prediction"] == "Hello world" and side["usage"] == USAGE
    assert side["finish_reason"] == "stop" and "parse_error" not in side
    assert (side["ttfb_ms"], side["duration_ms"], side["bytes"], side["events"]) == (
        3.0, 12.5, len(STREAM), 6)  # fmt: skip
    assert side["streamed"] is True and out["client_aborted"] is True
    rec.champion.body = b"data: {bad\n\n"
    side = finalize(rec, FinalizeOptions(prediction_format="openai"))["champion"]
    assert side["parse_error"] == "event 0: not JSON" and side["prediction"] == ""
