"""Text divergence: rapidfuzz against plain-Python references, mergeable aggregates, and the
report of ``router analyze --kind text`` on records with streamed text answers."""

from __future__ import annotations

import difflib
import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from rapidfuzz import fuzz

from router.analysis.policy import DEFAULT_REFUSALS
from router.analysis.text import TextAggregates, TextPair, hist_quantiles, text_section

ROOT = Path(__file__).resolve().parents[2]


def lcs(a: str, b: str) -> int:
    prev = [0] * (len(b) + 1)
    for ca in a:
        cur = [0]
        for j, cb in enumerate(b):
            cur.append(prev[j] + 1 if ca == cb else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def ratio_ref(a: str, b: str) -> float:
    """Indel similarity: 2 * LCS / (len a + len b), in percent."""
    return 100.0 if not a and not b else 200.0 * lcs(a, b) / (len(a) + len(b))


def token_set_ref(a: str, b: str) -> float:
    """token_set_ratio as FuzzyWuzzy defines it (no preprocessing)."""
    ta, tb = set(a.split()), set(b.split())
    sect = " ".join(sorted(ta & tb))
    ab, ba = " ".join(sorted(ta - tb)), " ".join(sorted(tb - ta))
    if not ta or not tb:
        return 0.0
    if sect and (not ab or not ba):
        return 100.0
    c_ab = f"{sect} {ab}".strip()
    c_ba = f"{sect} {ba}".strip()
    return max(ratio_ref(sect, c_ab) if sect else 0.0, ratio_ref(sect, c_ba) if sect else 0.0,
               ratio_ref(c_ab, c_ba))  # fmt: skip


PAIRS = [
    ("kitten", "sitting"),
    ("The model depends on the input.", "The model reflects the input."),
    ("Great question! It works.", "It works."),
    ("a b c d", "d c b a"),
    ("hello world", "hello there world"),
    ("", "nonempty"),
    ("same", "same"),
    ("fuzzy wuzzy was a bear", "wuzzy fuzzy was a bear"),
]


@pytest.mark.parametrize(("a", "b"), PAIRS)
def test_rapidfuzz_matches_plain_references(a: str, b: str) -> None:
    assert fuzz.ratio(a, b) == pytest.approx(ratio_ref(a, b), abs=1e-9)
    if a and b:
        assert fuzz.token_set_ratio(a, b) == pytest.approx(token_set_ref(a, b), abs=1e-9)
    # where difflib finds the longest common subsequence (short strings, no junk), its ratio
    # is the same definition
    sm = difflib.SequenceMatcher(None, a, b, autojunk=False)
    if sum(m.size for m in sm.get_matching_blocks()) == lcs(a, b) and (a or b):
        assert fuzz.ratio(a, b) / 100 == pytest.approx(sm.ratio(), abs=1e-12)


def _rounded(x: object) -> object:
    if isinstance(x, float):
        return round(x, 9)
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_rounded(v) for v in x]
    return x


def _agg() -> TextAggregates:
    return TextAggregates(3, 20, DEFAULT_REFUSALS)


def test_aggregates_merge_equals_one_pass_and_flags_flips() -> None:
    pairs = [TextPair(a, b, 100, 90, 1000, 800, 10, 12, key=i) for i, (a, b) in enumerate(PAIRS)]
    pairs.append(TextPair("Sure, here it is.", "I'm sorry, but I can't help with that.", key=99))
    pairs.append(TextPair("As an AI language model I refuse", "Fine: 42", key=98))
    one = _agg()
    for p in pairs:
        one.add(p)
    left, right = _agg(), _agg()
    for i, p in enumerate(pairs):
        (left if i % 2 else right).add(p)
    left.merge(right)
    a, b = text_section(one, 0.05), text_section(left, 0.05)
    assert _rounded(a) == _rounded(b)  # (moments merge exactly up to rounding)
    assert a["n"] == len(pairs) and a["exact_match"]["rate"] == pytest.approx(1 / len(pairs))
    assert a["flips"]["refusal_added"]["n"] == 1 and a["flips"]["refusal_removed"]["n"] == 1
    assert a["flips"]["empty_to_text"]["n"] == 1 and a["flips"]["text_to_empty"]["n"] == 0
    assert len(a["examples"]) == 3 and a["examples"][0]["ratio"] <= a["examples"][-1]["ratio"]
    assert all(len(e["champion"]) <= 20 for e in a["examples"])
    ratios = [fuzz.ratio(x, y) / 100 for x, y in [(p.champion, p.challenger) for p in pairs]]
    assert a["similarity"]["ratio"]["mean"] == pytest.approx(sum(ratios) / len(ratios))
    lo, hi = a["similarity"]["ratio"]["ci"]
    assert lo < a["similarity"]["ratio"]["mean"] < hi
    ttft = a["ttft_ms"]["paired_diff"]
    assert ttft["mean"] == pytest.approx(-10.0) and ttft["n"] == len(PAIRS)
    # tokens per second after the first token: 10 / 0.9 s and 12 / 0.71 s
    assert a["tokens_per_s"]["paired_diff"]["mean"] == pytest.approx(12 / 0.71 - 10 / 0.9)


def test_examples_can_be_hashed_or_omitted() -> None:
    for mode, expect in (("hash", "sha256:"), ("omit", "")):
        agg = TextAggregates(2, 50, DEFAULT_REFUSALS, mode)
        agg.add(TextPair("secret answer", "another secret"))
        (ex,) = text_section(agg, 0.05)["examples"]
        assert ex["champion"].startswith(expect) and "secret" not in ex["champion"]


def test_histogram_quantiles() -> None:
    import numpy as np

    h = np.zeros(20, dtype=np.int64)
    h[10] = 10  # ten values in [0.5, 0.55)
    q = hist_quantiles(h)
    assert 0.5 <= q["p10"] <= q["p50"] <= q["p90"] <= 0.55


def _record(i: int, a: str, b: str) -> dict[str, object]:
    side = lambda v, t, ttft: {"version": v, "status": 200, "latency_ms": 500.0,  # noqa: E731
                               "prediction": t, "error": None, "ttfb_ms": ttft,
                               "duration_ms": 500.0, "bytes": 100, "events": 8,
                               "streamed": True, "usage": {"completion_tokens": 6}}  # fmt: skip
    return {"v": 1, "experiment": "llm", "request_id": f"r{i}", "ts": 1.75e9 + i,
            "unit": f"u{i}", "bucket": 1, "served": "champion", "mirrored": True,
            "segment": {"lang": "en" if i % 2 else "de"}, "champion": side("c", a, 100.0),
            "challenger": side("h", b, 80.0 + i % 3), "contract": None}  # fmt: skip


def test_analyze_text_report(tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.jsonl"
    texts = [("The result follows the input.", "Great question! The result follows the input."),
             ("Same answer.", "Same answer."),
             ("It depends.", "I'm sorry, but I can't help with that.")]  # fmt: skip
    pairs.write_text("\n".join(json.dumps(_record(i, *texts[i % 3])) for i in range(60)) + "\n")
    outcomes = tmp_path / "outcomes.jsonl"
    outcomes.write_text("")
    outs = {}
    for fmt in ("json", "md"):
        r = subprocess.run([sys.executable, "-m", "router", "analyze", "--experiment", "llm",
                            "--pairs", str(pairs), "--outcomes", str(outcomes), "--kind", "text",
                            "--format", fmt], capture_output=True, text=True, cwd=ROOT,
                           timeout=120)  # fmt: skip
        assert r.returncode in (0, 1, 3), r.stderr
        outs[fmt] = r.stdout
    report = json.loads(outs["json"])
    schema = json.loads((ROOT / "router/schemas/report.schema.json").read_text())
    jsonschema.validate(report, schema)
    t = report["divergence"]["text"]
    assert report["divergence"]["kind"] == "text" and t["n"] == 60
    assert t["exact_match"]["rate"] == pytest.approx(1 / 3)
    assert t["flips"]["refusal_added"]["n"] == 20
    assert t["ttft_ms"]["paired_diff"]["mean"] == pytest.approx(-19.0)
    assert t["examples"][0]["challenger"].startswith("I'm sorry")
    md = outs["md"]
    assert "| exact match " in md and "33.3% [22.7, 45.9%]" in md
    assert "ratio 0.245: champion “It depends.” / challenger “I'm sorry" in md
