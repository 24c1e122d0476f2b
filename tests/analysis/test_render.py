"""The rendered reports read as an analyst expects: one formatting rule for numbers and times, a
headline, statuses in words, no raw timestamps, Python reprs or long floats, and
``router analyze --compare``."""

from __future__ import annotations

import html
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from router.analysis import build_report, fmt
from router.analysis.compare import CompareError, compare, previous_look
from router.analysis.render import SECTIONS, sections, to_markdown
from router.analysis.render_html import to_html
from router.demo.synth import SynthSpec, dataset
from tests.analysis.demo_like import demo_like
from tests.analysis.test_report import SCHEMA


@pytest.mark.parametrize(
    ("fn", "value", "text"),
    [
        (fmt.num, 0.003557, "0.00356"),
        (fmt.num, 1.863e4, "18,600"),
        (fmt.num, 9.996, "10"),
        (fmt.num, -0.8268, "−0.827"),
        (fmt.num, 2.764e-112, "2.76e-112"),
        (fmt.num, 5821, "5,821"),
        (fmt.num, None, "–"),
        (fmt.num, float("nan"), "–"),
        (fmt.pvalue, 2.764e-112, "< 0.001"),
        (fmt.pvalue, 0.03412, "0.034"),
        (fmt.pvalue, 1.0, "1"),
        (fmt.pct, 0.1472857142857143, "14.7%"),
        (fmt.pp, 0.027, "+2.7 pp"),
        (fmt.pp, -0.004, "−0.4 pp"),
        (fmt.pp, 0.0, "0 pp"),
        (fmt.ms, 12.345, "12.3 ms"),
        (fmt.ms, 1523.0, "1.52 s"),
        (fmt.duration, 0.25, "250 ms"),
        (fmt.duration, 45.2, "45 s"),
        (fmt.duration, 192, "3 min 12 s"),
        (fmt.duration, 7505, "2 h 5 min"),
        (fmt.duration, 7200, "2 h"),
        (fmt.duration, 3 * 86400 + 4 * 3600 + 5, "3 d 4 h"),
        (fmt.count, 8179.0, "8,179"),
        (fmt.utc, 1796030966.9, "2026-11-30 09:29:26 UTC"),
    ],
)
def test_formatting_rules(fn: Any, value: Any, text: str) -> None:
    assert fn(value) == text


def test_window_interval_and_free_text() -> None:
    assert fmt.utc_span(1796030966.9, 1796030976.48) == (
        "2026-11-30 09:29:26 to 09:29:36 UTC (9.6 s)"
    )
    assert fmt.utc_span(1796030966.9, 1796030966.9 + 86400) == (
        "2026-11-30 09:29:26 to 2026-12-01 09:29:26 UTC (1 d)"
    )
    assert fmt.interval([0.004, 0.051], fmt.pp) == "+0.4 to +5.1 pp"
    assert fmt.bracket([-5.85, 3.3], fmt.signed) == "[−5.85, +3.3]"
    assert fmt.interval([None, 0.1], fmt.pp) == "–"
    assert fmt.tidy("accuracy -0.007196 on 4030 pairs (McNemar p=1.286e-30), chi-square "
                    "p=0.8488") == (
        "accuracy −0.0072 on 4030 pairs (McNemar p < 0.001), chi-square p = 0.85"
    )  # fmt: skip


# a unix time (2001-2286) in seconds or milliseconds, with or without separators
RAW_TS = re.compile(
    r"(?<![\w.])1[0-9]{9}(?:[0-9]{3})?(?:\.[0-9]+)?(?![\w])|1,[0-9]{3},[0-9]{3},[0-9]{3}"
)
REPR = re.compile(r"\{'|'\}|': |\bNone\b|\bnan\b|\binf\b|np\.float|array\(|<[a-z_.]+ object at")
NUMBER = re.compile(r"(?<![\w.])[0-9][0-9,]*\.[0-9]+(?:e[-+]?[0-9]+)?|(?<![\w.])[0-9]+e[-+]?[0-9]+")


def significant_digits(token: str) -> int:
    mant = token.lower().split("e")[0].replace(",", "").replace(".", "").lstrip("0")
    return len(mant)


def visible_text(page: str) -> str:
    page = re.sub(r"<style>.*?</style>", " ", page, flags=re.S)
    page = re.sub(r"src='data:[^']*'", " ", page)
    return html.unescape(re.sub(r"<[^>]+>", " ", page))


def text_problems(text: str) -> list[str]:
    out = [f"raw unix timestamp {m.group(0)!r}" for m in RAW_TS.finditer(text)]
    out += [f"Python repr {m.group(0)!r}" for m in REPR.finditer(text)]
    out += [f"float with > 4 significant digits {m.group(0)!r}" for m in NUMBER.finditer(text)
            if significant_digits(m.group(0)) > 4]  # fmt: skip
    return out


def test_the_checks_catch_what_the_issue_saw() -> None:
    bad = ("window: 1796030966.9 .. 1796030976.48; flip rate {'0.5': 0.1472857142857143}; "
           "0.003557 1.863e+04 p = 2.764e-112")  # fmt: skip
    problems = text_problems(bad)
    assert any("timestamp" in p for p in problems)
    assert any("repr" in p for p in problems)
    assert any("0.1472857142857143" in p for p in problems)
    assert not text_problems("p < 0.001, 2.7 pp, 14,000 requests, 0.00356, 1.86e4, 12.3 ms")


def test_markdown_and_html_text_is_clean() -> None:
    report, acc = demo_like()
    md = to_markdown(report)
    page = to_html(report, acc)
    assert text_problems(md) == []
    assert text_problems(visible_text(page)) == []
    # statuses are words, never an emoji alone
    assert not re.search("[\u2705\u274c\u23f3\u26a0]", md + page)


def test_headline_says_the_decision_in_words() -> None:
    report, _ = demo_like()
    head = sections(report)[0]
    md = to_markdown(report)
    assert head.title == "Decision"
    decision = md.split("## Gates")[0]
    assert f"**{report['decision']['action'].upper()}**" in decision
    # the primary metric in percentage points with its always-valid interval, the evidence
    # type, the window in UTC with its duration, and what would change the decision
    assert re.search(r"\*\*converted\*\* \(primary goal, live split\): challenger [0-9.]+% vs "
                     r"champion [0-9.]+%, \+[0-9.]+ pp", decision)  # fmt: skip
    assert "95% always-valid interval" in decision
    assert "mirrored pairs: both models on the same" in decision
    assert re.search(r"Window: 2026-11-30 09:29:26 to [0-9:]{8} UTC \([0-9]+ s\)", decision)
    assert "What would change it:" in decision
    assert report["decision"]["action"] == "continue"
    assert "ETA to significance for converted: about" in decision
    # the uneven request counts are explained next to them
    assert "not by request" in md and "Zipf" in md


def test_every_section_opens_with_what_it_measures() -> None:
    report, _ = demo_like()
    secs = sections(report)
    assert len({s.key for s in secs}) == len(secs)
    for s in secs:
        assert s.lede and len(s.lede) < 300, s.title
    md = to_markdown(report)
    for s in secs:
        assert f"## {s.title}\n\n_{s.lede}_" in md
    assert len(SECTIONS) >= 12


def test_markdown_tables_line_up_in_a_terminal() -> None:
    report, _ = demo_like()
    md = to_markdown(report)
    blocks = re.findall(r"(?:^\|.*\|\n)+", md, flags=re.M)
    assert len(blocks) >= 8
    for b in blocks:
        widths = {len(line) for line in b.splitlines()}
        assert len(widths) == 1, b
    gates = md.split("## Gates")[1].split("## ")[0]
    assert re.search(r"\| `primary_metric` +\| PASS +\|", gates)


def test_maps_render_as_tables() -> None:
    report, _ = demo_like()
    md = to_markdown(report)
    assert "| threshold | flip rate |" in md
    assert "{" not in md.split("## Divergence")[1].split("## ")[0]


def test_uplift_plot_is_of_the_primary_metric() -> None:
    from router.analysis.plots import plots

    report, acc = demo_like()
    figs = plots(report, acc)
    titles = [f.title for f in figs]
    assert "Uplift over time: converted" in titles
    assert not any("label" in t for t in titles)
    assert {f.section for f in figs} <= {s.key for s in sections(report)}
    assert all(f.caption.startswith("What to look for:") for f in figs)
    series = report["metrics"]["converted"]["series"]
    assert len(series) >= 6 and series[-1]["sequential_ci"][0] is not None
    # a per-request metric's series is its ratio of unit sums per exposure cohort: the last
    # cohort holds every unit, so it is the whole window's uplift (every request has a unit)
    up = report["metrics"]["converted"]["uplift"]
    assert series[-1]["absolute"] == pytest.approx(up["absolute"], rel=1e-9)
    assert series[-1]["sequential_ci"] == pytest.approx(up["sequential_ci"], rel=1e-9)
    assert [p["n"][0] for p in series] == sorted(p["n"][0] for p in series)


def test_comparison_is_schema_valid_and_names_what_moved() -> None:
    report, _ = demo_like()
    doc = json.loads(json.dumps(report, allow_nan=False))
    jsonschema.validate(doc, SCHEMA)
    c = report["comparison"]
    assert c["previous"]["kind"] == "report"
    figures = {(x["section"], x["figure"]): x for x in c["figures"]}
    rec = figures[("traffic", "mirrored pairs")]
    assert rec["before"] == 3000 and rec["after"] == 6000 and rec["change"] == 3000
    assert ("converted", "uplift") in figures
    md = to_markdown(report)
    assert "## Changes since the previous look" in md


def test_compare_accepts_a_controller_verdict_and_refuses_other_json() -> None:
    report, _ = demo_like()
    state = {"stage": "canary", "last_verdict": {
        "at": 1796030000.0, "action": "continue", "reasons": ["x"],
        "gates": [{"name": "srm", "state": "pass", "value": 1.0}],
        "counts": {"records": 10, "per_variant": {"champion": 6, "challenger": 4}},
        "window": {"first_record_ts": 1796029000.0, "last_record_ts": 1796029900.0}}}  # fmt: skip
    c = compare(report, state)
    assert c["previous"]["kind"] == "controller verdict"
    assert c["decision"] == {"before": "continue", "after": "continue", "changed": False}
    champ = next(x for x in c["figures"] if x["figure"] == "records champion")
    assert champ["before"] == 6 and champ["after"] == report["counts"]["per_variant"]["champion"]
    accuracy = next(x for x in c["figures"] if x["figure"] == "accuracy champion")
    assert accuracy["before"] is None and accuracy["change"] is None
    with pytest.raises(CompareError, match="not a report"):
        previous_look({"foo": 1})
    with pytest.raises(CompareError, match="no last_verdict yet"):
        previous_look({"stage": "shadow", "last_verdict": None})
    with pytest.raises(CompareError, match="JSON object"):
        previous_look([1, 2])


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "router", "analyze", "--experiment", "synth",
                           *args], capture_output=True, text=True, timeout=120)  # fmt: skip


def test_cli_compare(tmp_path: Path) -> None:
    prev = tmp_path / "prev.json"
    p = _cli("--synthetic", "1500", "--seed", "3", "--format", "json", "-o", str(prev))
    assert p.returncode == 0, p.stderr
    p = _cli("--synthetic", "3000", "--seed", "3", "--compare", str(prev), "--format", "md")
    assert p.returncode == 0, p.stderr
    assert "## Changes since the previous look" in p.stdout
    assert text_problems(p.stdout) == []
    p = _cli("--synthetic", "3000", "--seed", "3", "--compare", str(prev), "--format", "json")
    assert json.loads(p.stdout)["comparison"]["previous"]["kind"] == "report"
    bad = tmp_path / "bad.json"
    bad.write_text('{"hello": 1}')
    p = _cli("--synthetic", "100", "--compare", str(bad))
    assert p.returncode == 2
    assert p.stderr.strip().startswith("router: --compare: ") and "bad.json" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    p = _cli("--synthetic", "100", "--compare", str(tmp_path / "missing.json"))
    assert p.returncode == 2 and "cannot read" in p.stderr
    bad.write_text("{not json")
    p = _cli("--synthetic", "100", "--compare", str(bad))
    assert p.returncode == 2 and "not JSON" in p.stderr


@pytest.mark.parametrize(
    ("name", "spec", "split"),
    [
        ("empty", None, 0.5),
        ("shadow only", SynthSpec(n=600, split=0.0, mirror=1.0, seed=2), 0.0),
        ("no mirroring", SynthSpec(n=600, mirror=0.0, seed=3), 0.5),
        ("class", SynthSpec(n=600, kind="class", seed=4), 0.5),
        ("vector", SynthSpec(n=600, kind="vector", seed=5), 0.5),
        ("value", SynthSpec(n=600, kind="value", seed=6), 0.5),
        ("broken challenger", SynthSpec(n=800, challenger_error_rate=0.2, contract_break=0.1,
                                        challenger_latency_ms=80.0, seed=8), 0.5),
        ("sample ratio mismatch", SynthSpec(n=1500, split=0.8, seed=9), 0.5),
    ],
)  # fmt: skip
def test_every_kind_of_window_renders_cleanly(name: str, spec: SynthSpec | None,
                                              split: float) -> None:  # fmt: skip
    recs, outs = dataset(spec) if spec is not None else ([], [])
    if spec is not None and name == "broken challenger":
        recs = [*recs, "garbage", {"v": 1, "request_id": "x", "ts": 1.7e12}]
    report = build_report(recs, outs, experiment="synth", split=split,
                          prediction_kind=spec.kind if spec else None)  # fmt: skip
    md = to_markdown(report)
    page = to_html(report, None)
    assert text_problems(md) == [], name
    assert text_problems(visible_text(page)) == [], name
    assert f"**{report['decision']['action'].upper()}**" in md
    assert "What would change it:" in md
