"""`router analyze --archive … --kind text`: the report over archived text records (issue 15's
per-side timing, usage and streaming keys, typed archive columns) equals the report over the
same records as JSONL, paired time to first token and tokens per second included."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson
import redis

from router.analysis.policy import load_policy
from router.analysis.reader import Source
from router.analysis.run import analyze
from router.archive.archiver import Archiver
from router.archive.store import ArchiveStore
from router.config import ArchiveConfig
from tests.archive.conftest import T0_MS
from tests.archive.test_analyze import assert_same

TEXTS = [("The result follows the input.", "Great question! The result follows the input."),
         ("Same answer.", "Same answer."),
         ("It depends.", "I'm sorry, but I can't help with that."),
         ("Paris is the capital of France.", "The capital of France is Paris.")]  # fmt: skip


def _side(rng: random.Random, version: str, text: str, ttft: float, i: int) -> dict[str, Any]:
    dur = ttft + rng.uniform(200, 900)
    side: dict[str, Any] = {"version": version, "status": 200, "latency_ms": round(dur, 3),
                            "prediction": text, "error": None, "ttfb_ms": round(ttft, 3),
                            "bytes": 300 + i % 97}  # fmt: skip
    if i % 5:  # streamed: duration, events, usage (sometimes without completion_tokens)
        side |= {"streamed": True, "duration_ms": round(dur, 3), "events": 5 + i % 11,
                 "finish_reason": "stop" if i % 13 else "length",
                 "usage": {"prompt_tokens": 7, "completion_tokens": 4 + i % 9}
                 if i % 7 else {"prompt_tokens": 7}}  # fmt: skip
    if i % 17 == 0:
        side["parse_error"] = "no choices"
    return side


def _records(n: int) -> list[dict[str, Any]]:
    rng = random.Random(15)
    out = []
    for i in range(n):
        a, b = TEXTS[i % len(TEXTS)]
        rec: dict[str, Any] = {
            "v": 1, "experiment": "llm", "request_id": f"r{i}", "ts": T0_MS / 1000 + i * 4,
            "unit": f"u{i % 90}", "bucket": i % 10_000, "served": "champion",
            "mirrored": i % 10 != 0, "segment": {"lang": "en" if i % 2 else "de"},
            "champion": _side(rng, "c", a, rng.uniform(80, 140), i), "challenger": None,
            "contract": None,
        }  # fmt: skip
        if rec["mirrored"]:
            rec["challenger"] = _side(rng, "h", b, rng.uniform(60, 150), i + 1)
        if i % 23 == 0:
            rec["client_aborted"] = True
        out.append(rec)
    return out


def test_a_text_report_over_the_archive_equals_the_one_over_jsonl(
    redis_url: str, tmp_path: Path
) -> None:
    records = _records(2400)  # 2.7 hours, every 4 s: three hour partitions
    client = redis.Redis.from_url(redis_url)
    pipe = client.pipeline()
    for i, rec in enumerate(records):
        pipe.xadd("llm:pairs", {"r": orjson.dumps(rec)}, id=f"{T0_MS + i * 4000}-0")
    pipe.execute()
    root = tmp_path / "archive"
    totals = Archiver(client, ArchiveStore.open(str(root)), "llm",
                      ArchiveConfig(max_buffer_records=500)).run(until_idle=True)  # fmt: skip
    assert totals.records["pairs"] == len(records)
    pairs, outcomes = tmp_path / "pairs.jsonl", tmp_path / "outcomes.jsonl"
    pairs.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    outcomes.write_bytes(b"")
    policy = load_policy(None)
    from_jsonl = analyze(Source("llm", pairs_file=str(pairs), outcomes_file=str(outcomes)),
                         policy, kind="text")  # fmt: skip
    from_archive = analyze(Source("llm", archive=str(root)), policy, kind="text")
    pooled = analyze(Source("llm", archive=str(root)), policy, kind="text",
                     executor="processes", workers=2)  # fmt: skip
    t = from_archive["divergence"]["text"]
    assert from_archive["divergence"]["kind"] == "text" and t["n"] == 2160
    ttft = t["ttft_ms"]
    assert ttft["paired_diff"]["n"] == 2160 and ttft["champion"]["mean"] > 0
    assert t["tokens_per_s"]["paired_diff"]["n"] > 0  # (usage and events read from the archive)
    assert from_archive["archive"]["files"] >= 3
    assert_same(from_jsonl, from_archive)
    assert_same(from_archive, pooled)
