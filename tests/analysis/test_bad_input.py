"""Input that would become a confident wrong answer (issue 20, items 6-13): each test is named
after its item, and each failed on the code before the fix."""

from __future__ import annotations

import gzip
import json
import math
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from router.analysis import Policy, build_report, parse_policy
from router.analysis.accumulate import Accumulator
from router.analysis.frames import prepare_records, record_schema
from router.analysis.outcomes_index import OutcomeIndex
from router.analysis.policy import PrimaryMetric
from router.capture.outcomes import parse_outcomes
from router.config import AdminConfig, LimitsConfig
from router.demo.synth import SynthSpec, dataset
from tests.helpers import TOKEN, InProcessRouter, config_dict, make_config, read_stream, wait_for

from .test_report import strict_json


def _lines(rows: list[Any]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in rows)


def _write(path: Path, rows: list[Any]) -> Path:
    path.write_bytes(_lines(rows))
    return path


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "router", "analyze", *args],
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def _one_line_exit_2(p: subprocess.CompletedProcess[str], *words: str) -> None:
    assert p.returncode == 2, (p.returncode, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert "Traceback" not in p.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])


def gate(r: dict[str, Any], name: str) -> dict[str, Any]:
    return next(g for g in r["gates"] if g["name"] == name)


SMALL = Policy(min_samples=200, primary_metric=PrimaryMetric(name="converted"))
# a window the analyzer promotes (as in test_report.test_clearly_better_challenger_is_promoted)
PROMOTE = SynthSpec(n=40_000, units=8_000, conversion_uplift=0.08, seed=3)


@pytest.fixture(scope="module")
def promote_data() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    return dataset(PROMOTE)


# ------------------------------------------------------------------ item 6: policy metrics
def test_item6_label_metric_typo_is_a_warning_and_the_accuracy_gate_is_not_evaluable(
    promote_data: tuple[list[dict[str, Any]], list[dict[str, Any]]],
) -> None:
    recs, outs = promote_data
    good = build_report(recs, outs, experiment="synth", policy=SMALL, split=0.5)
    assert good["decision"]["action"] == "promote"
    typo = SMALL.model_copy(update={"label_metric": "lable"})
    r = strict_json(build_report(recs, outs, experiment="synth", policy=typo, split=0.5))
    g = gate(r, "accuracy_drop")
    assert g["state"] == "not_evaluable" and g["passed"] is False
    assert "lable" in g["reason"]
    assert r["decision"]["action"] == "continue"
    assert any("accuracy_drop" in x for x in r["decision"]["reasons"])
    warnings = r["data_quality"]["warnings"]
    assert any("lable" in w and "label_metric" in w for w in warnings)


def test_item6_primary_and_declared_metrics_missing_from_the_data_are_warnings() -> None:
    recs, outs = dataset(SynthSpec(n=3000, seed=61))
    policy = parse_policy({"min_samples": 50, "primary_metric": {"name": "revenue"},
                           "metrics": {"refunds": {"type": "mean"}}})  # fmt: skip
    r = strict_json(build_report(recs, outs, experiment="synth", policy=policy, split=0.5))
    warnings = " | ".join(r["data_quality"]["warnings"])
    assert "'revenue'" in warnings and "'refunds'" in warnings
    g = gate(r, "primary_metric")  # never a pass: it waits for outcomes of the metric
    assert g["passed"] is False and g["state"] in ("not_enough_data", "not_evaluable")
    assert r["decision"]["action"] != "promote"


def test_item6_strict_turns_policy_warnings_into_exit_2(tmp_path: Path) -> None:
    recs, outs = dataset(SynthSpec(n=2000, seed=62))
    pairs, outcomes = _write(tmp_path / "p.jsonl", recs), _write(tmp_path / "o.jsonl", outs)
    policy = tmp_path / "policy.yaml"
    policy.write_text("policy:\n  label_metric: lable\n")
    common = ["--experiment", "synth", "--pairs", str(pairs), "--outcomes", str(outcomes),
              "--policy", str(policy), "--format", "json"]  # fmt: skip
    p = _cli(*common)
    assert p.returncode == 0, p.stderr
    assert any("lable" in w for w in json.loads(p.stdout)["data_quality"]["warnings"])
    _one_line_exit_2(_cli(*common, "--strict"), "lable", "label_metric")


# ------------------------------------------------------------------ item 7: outcome retries
async def test_item7_a_blind_retry_of_an_outcome_without_ts_counts_once(
    echo_pair: Any, tmp_path: Path, redis_url: str
) -> None:
    champ, chall = echo_pair
    cfg = make_config(config_dict(champ, chall, redis_url, tmp=tmp_path))
    rows = b"\n".join(orjson.dumps({"request_id": f"r{i}", "metric": "revenue", "value": 10})
                      for i in range(2))  # fmt: skip
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with (
        InProcessRouter(cfg, tmp_path / "run", redis_url) as router,
        aiohttp.ClientSession() as s,
    ):
        for _attempt in range(2):  # the client timed out and sent the same body again
            async with s.post(f"{router.url}/outcomes", data=rows, headers=auth) as r:
                assert r.status == 200, await r.text()
            time.sleep(0.01)  # the second receipt time differs
        assert await wait_for(lambda: len(read_stream(redis_url, "t:outcomes")) == 4)
    stored = read_stream(redis_url, "t:outcomes")
    now = time.time()
    recs = [{"v": 1, "experiment": "t", "request_id": f"r{i}", "ts": now - 10, "unit": f"u{i}",
             "served": "champion", "mirrored": False,
             "champion": {"version": "a", "status": 200, "latency_ms": 2.0, "prediction": 0.4}}
            for i in range(2)]  # fmt: skip
    policy = Policy(metrics={"revenue": {"type": "mean", "per": "request"}})  # type: ignore[dict-item]
    r = build_report(recs, stored, experiment="t", policy=policy)
    assert r["counts"]["outcomes"]["duplicates"] == 2
    assert r["metrics"]["revenue"]["variants"]["champion"]["mean"] == pytest.approx(10.0)


def test_item7_outcome_ids_deduplicate_and_distinct_ids_count() -> None:
    recs, _ = dataset(SynthSpec(n=200, seed=71))
    rid = recs[0]["request_id"]
    outs = [
        {"id": "a", "request_id": rid, "metric": "revenue", "value": 5, "ts": 1_790_000_100.0},
        {"id": "a", "request_id": rid, "metric": "revenue", "value": 5, "ts": 1_790_000_200.0},
        {"id": "b", "request_id": rid, "metric": "revenue", "value": 5, "ts": 1_790_000_100.0},
    ]
    r = build_report(recs, outs, experiment="synth")
    assert r["counts"]["outcomes"]["valid"] == 2
    assert r["counts"]["outcomes"]["duplicates"] == 1


def test_item7_post_outcomes_dedupes_ids_within_a_request() -> None:
    raw = _lines([
        {"id": "x1", "request_id": "r", "metric": "m", "value": 1},
        {"id": "x1", "request_id": "r", "metric": "m", "value": 1},
        {"request_id": "r", "metric": "m", "value": 1},
        {"request_id": "r", "metric": "m", "value": 1},
        {"request_id": "r", "metric": "m", "value": 1, "ts": 1_790_000_000},
    ])  # fmt: skip
    ok, bad = parse_outcomes(raw, "exp")
    assert len(ok) == 3
    assert [n for n, _ in bad] == [2, 4]
    assert all("duplicate" in why for _, why in bad)
    assert ok[0]["id"] == "x1" and ok[1]["id"] and ok[1]["id"] != ok[2]["id"]


# ------------------------------------------------------------------ item 8: implausible records
@pytest.mark.parametrize(
    "change,field,kind",
    [
        ({"ts": 1_790_000_000_000.0}, "ts", "milliseconds"),
        ({"ts": 1_790_000_000_000_000.0}, "ts", "milliseconds"),
        ({"ts": time.time() + 30 * 86400}, "ts", "future"),
        ({"ts": 12.5}, "ts", "before"),
        ({"v": 2}, "v", "unsupported"),
        ({"v": "banana"}, "v", "wrong type"),
        ({"champion": {"version": "a", "status": 200, "latency_ms": -3.0, "prediction": 0.1}},
         "champion.latency_ms", "negative"),
    ],
)
def test_item8_implausible_records_are_invalid_with_a_reason(
    change: dict[str, Any], field: str, kind: str
) -> None:
    recs, _ = dataset(SynthSpec(n=100, seed=81, mirror=0.0, split=0.0))
    bad = dict(recs[3], **change)
    r = strict_json(build_report([*recs[:3], bad, *recs[4:]], [], experiment="synth"))
    assert r["counts"]["records"] == 99
    assert r["counts"]["invalid_records"] == 1
    (reason,) = r["data_quality"]["records"]["reasons"]
    assert reason["field"] == field and kind in reason["kind"], reason
    assert reason["examples"] == ["item 4"]


def test_item8_records_in_milliseconds_do_not_reach_the_eta() -> None:
    recs, outs = dataset(SynthSpec(n=2000, seed=82))
    ms = [dict(r, ts=r["ts"] * 1000) if i % 2 else r for i, r in enumerate(recs)]
    r = build_report(ms, outs, experiment="synth", split=0.5)
    assert r["counts"]["invalid_records"] == 1000
    assert r["window"]["last_record_ts"] < 2e9


# ------------------------------------------------------------------ item 9: reasons, hold
def test_item9_invalid_reasons_by_field_with_line_numbers_and_a_hold(tmp_path: Path) -> None:
    recs, outs = dataset(SynthSpec(n=3000, seed=91))
    lines = [orjson.dumps(r) for r in recs]
    for i in (10, 20, 30):
        lines[i] = orjson.dumps(dict(recs[i], ts=recs[i]["ts"] * 1000))
    for i in range(100, 160):
        lines[i] = b"{not json"
    pairs = tmp_path / "p.jsonl"
    pairs.write_bytes(b"\n".join(lines) + b"\n")
    outcomes = _write(tmp_path / "o.jsonl", outs)
    p = _cli("--experiment", "synth", "--pairs", str(pairs), "--outcomes", str(outcomes),
             "--split", "0.5", "--format", "json")  # fmt: skip
    assert p.returncode == 0, p.stderr
    r = strict_json(json.loads(p.stdout))
    dq = r["data_quality"]["records"]
    assert dq["invalid"] == 63 and r["counts"]["invalid_records"] == 63
    by = {(x["field"], x["kind"].split(" ")[0]): x for x in dq["reasons"]}
    ts = next(x for (f, _), x in by.items() if f == "ts")
    assert ts["count"] == 3 and ts["examples"] == ["line 11", "line 21", "line 31"]
    js = next(x for (f, _), x in by.items() if f == "record")
    assert js["count"] == 60 and js["examples"][:2] == ["line 101", "line 102"]
    assert len(js["examples"]) <= 5
    assert r["decision"]["action"] == "hold"
    assert any("invalid" in x and "2.1%" in x for x in r["decision"]["reasons"])
    g = gate(r, "invalid_records")
    assert g["passed"] is False and g["threshold"] == 0.01
    # the threshold is a policy key
    policy = tmp_path / "policy.yaml"
    policy.write_text("policy:\n  data_quality:\n    max_invalid_share: 0.05\n")
    p = _cli("--experiment", "synth", "--pairs", str(pairs), "--outcomes", str(outcomes),
             "--split", "0.5", "--format", "json", "--policy", str(policy))  # fmt: skip
    r = json.loads(p.stdout)
    assert gate(r, "invalid_records")["passed"] is True
    assert r["decision"]["action"] != "hold"


def test_item9_invalid_stream_entries_are_named_by_stream_id(redis_url: str) -> None:
    import redis

    from .test_report import xadd_records

    recs, _ = dataset(SynthSpec(n=300, seed=92))
    client = redis.Redis.from_url(redis_url)
    xadd_records(client, "synth:pairs", recs)
    bad_id = client.xadd("synth:pairs", {"r": orjson.dumps(dict(recs[0], request_id="x",
                                                                 v="banana"))})  # fmt: skip
    p = _cli("--experiment", "synth", "--redis", redis_url, "--format", "json")
    assert p.returncode == 0, p.stderr
    (reason,) = json.loads(p.stdout)["data_quality"]["records"]["reasons"]
    assert reason["field"] == "v" and reason["examples"] == [f"synth:pairs {bad_id.decode()}"]


def test_item9_invalid_outcome_lines_are_reported_with_reasons() -> None:
    oi = OutcomeIndex()
    rows = [{"request_id": "r1", "metric": "m", "value": 1},
            {"metric": "m", "value": 1},  # nothing to join by
            {"request_id": "r2", "metric": "m", "value": 1, "ts": 1.79e12},  # milliseconds
            {"request_id": "", "unit": "", "metric": "m", "value": 2}]  # fmt: skip
    oi.add_raw([_lines(rows)], "synth")
    assert oi.valid == 1 and oi.invalid == 3
    by = {(r["field"], r["kind"]): r["examples"] for r in oi.rejected.rows()}
    assert by[("request_id", "missing (and no unit to join by)")] == ["line 2", "line 4"]
    assert by[("ts", "in milliseconds (or finer), not seconds")] == ["line 3"]


# ------------------------------------------------------------------ item 10: one line, one verdict
def test_item10_a_bad_line_does_not_change_the_verdict_of_its_neighbours() -> None:
    recs, _ = dataset(SynthSpec(n=200, seed=101))
    numeric_units = [dict(r, unit=i) for i, r in enumerate(recs)]
    schema = record_schema(numeric=True, fields=False)
    alone = prepare_records(_lines(numeric_units), schema)
    beside = prepare_records(_lines(numeric_units) + b"{oops\n", schema)
    assert alone.invalid == 0 and alone.cols.height == 200
    assert beside.invalid == 1 and beside.cols.height == 200
    assert beside.cols["unit"].to_list() == alone.cols["unit"].to_list()


# ------------------------------------------------------------------ item 11: experiments, conflicts
def test_item11_an_experiment_typo_names_the_experiments_present(tmp_path: Path) -> None:
    recs, outs = dataset(SynthSpec(n=500, seed=111))
    pairs, outcomes = _write(tmp_path / "p.jsonl", recs), _write(tmp_path / "o.jsonl", outs)
    p = _cli("--experiment", "synht", "--pairs", str(pairs), "--outcomes", str(outcomes))
    _one_line_exit_2(p, "synht", "synth", "500")


def test_item11_records_and_outcomes_of_other_experiments_are_counted_by_name() -> None:
    recs, outs = dataset(SynthSpec(n=500, seed=114))
    other = [dict(r, experiment="checkout", request_id="c" + r["request_id"]) for r in recs[:40]]
    other_outs = [dict(o, experiment="checkout") for o in outs[:7]]
    r = strict_json(build_report(recs + other, outs + other_outs, experiment="synth"))
    assert r["counts"]["records"] == 500 and r["counts"]["outside_window"] == 0
    assert r["data_quality"]["records"]["other_experiments"] == {"checkout": 40}
    assert r["data_quality"]["outcomes"]["other_experiments"] == {"checkout": 7}


def test_item11_an_experiment_typo_on_redis_names_the_experiments_present(redis_url: str) -> None:
    import redis

    from .test_report import xadd_records

    recs, _ = dataset(SynthSpec(n=300, seed=112))
    xadd_records(redis.Redis.from_url(redis_url), "synth:pairs", recs)
    p = _cli("--experiment", "synht", "--redis", redis_url)
    _one_line_exit_2(p, "synht", "synth")


def test_item11_reused_request_ids_with_other_contents_are_conflicts() -> None:
    recs, outs = dataset(SynthSpec(n=1000, seed=113))
    undefined = [dict(r, request_id="undefined") for r in recs[:50]]
    replayed = recs[100:110]  # the same records again: duplicates, not conflicts
    r = strict_json(build_report(recs[50:] + undefined + replayed, outs, experiment="synth"))
    assert r["counts"]["duplicates_skipped"] == 10
    c = r["data_quality"]["records"]["conflicts"]
    assert c["count"] == 49 and c["examples"] == ["undefined"]
    assert r["counts"]["conflicts"] == 49


def test_item11_post_outcomes_for_another_experiment_is_rejected() -> None:
    raw = _lines([{"experiment": "other", "request_id": "r", "metric": "m", "value": 1},
                  {"experiment": "exp", "request_id": "r", "metric": "m", "value": 1}])
    ok, bad = parse_outcomes(raw, "exp")
    assert len(ok) == 1
    ((line, why),) = bad
    assert line == 1 and "other" in why and "exp" in why


# ------------------------------------------------------------------ item 12: bounds
def test_item12_segment_values_are_capped_and_memory_is_bounded() -> None:
    recs, _ = dataset(SynthSpec(n=400, seed=121, mirror=0.0))
    cap = 1000  # the default of policy segments.max_tracked_values

    def feed(distinct: int) -> tuple[Accumulator, int]:
        acc = Accumulator(Policy(), OutcomeIndex(), experiment="synth")
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        for page in range(distinct // 2000):
            batch = [dict(recs[i % 400], request_id=f"p{page}-{i}",
                          segment={"country": f"c{page * 2000 + i}"}) for i in range(2000)]
            acc.add(batch)
        used = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        return acc, used

    _, used_small = feed(2000)
    big, used_big = feed(10_000)
    # the per-request-id sets grow 16 bytes a record; the segment state does not grow
    assert used_big - used_small < 8000 * 200, (used_small, used_big)
    countries = {v for (f, v) in big.segments.tallies if f == "country"}
    assert len(countries) == cap + 1 and "other" in countries
    other = big.segments.tallies[("country", "other")]
    assert sum(other.requests) == 10_000 - cap
    assert big.segments.overflow == {"country": 10_000 - cap}
    assert Policy().segments.max_tracked_values == cap


def test_item12_too_many_outcome_metric_names_is_a_clear_error(tmp_path: Path) -> None:
    from router.analysis.outcomes_index import TooManyMetrics

    rows = [{"request_id": f"r{i}", "metric": f"m{i}", "value": 1} for i in range(70_000)]
    oi = OutcomeIndex()
    with pytest.raises(TooManyMetrics, match="distinct outcome metric names"):
        oi.add_raw([_lines(rows)], "synth")
        oi.metrics  # noqa: B018
    recs, _ = dataset(SynthSpec(n=100, seed=122))
    pairs, outcomes = _write(tmp_path / "p.jsonl", recs), _write(tmp_path / "o.jsonl", rows)
    p = _cli("--experiment", "synth", "--pairs", str(pairs), "--outcomes", str(outcomes))
    _one_line_exit_2(p, "o.jsonl", "metric names")


# ------------------------------------------------------------------ item 13: one-line errors
def test_item13_a_truncated_gzip_is_one_line_naming_the_file(tmp_path: Path) -> None:
    recs, _ = dataset(SynthSpec(n=3000, seed=131))
    whole = gzip.compress(_lines(recs))
    pairs = tmp_path / "p.jsonl.gz"
    pairs.write_bytes(whole[: len(whole) // 2])
    _one_line_exit_2(_cli("--experiment", "synth", "--pairs", str(pairs)), str(pairs), "gzip")


def test_item13_a_policy_that_is_not_utf8_is_one_line_naming_the_file(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_bytes(b"policy:\n  label_metric: \xff\xfe\n")
    p = _cli("--experiment", "synth", "--synthetic", "100", "--policy", str(policy))
    _one_line_exit_2(p, str(policy), "UTF-8")


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_item13_non_finite_times_are_one_line_naming_the_argument(value: str) -> None:
    _one_line_exit_2(_cli("--experiment", "x", "--synthetic", "10", "--since", value), "--since")


@pytest.mark.parametrize("url", ["redis://h:port/0", "redis://:99999999/0", "http://h:6379",
                                 "redis+cluster://"])
def test_item13_a_malformed_redis_url_is_one_line_naming_the_argument(
    url: str, tmp_path: Path
) -> None:
    _one_line_exit_2(_cli("--experiment", "x", "--redis", url), "--redis")
    export = subprocess.run([sys.executable, "-m", "router", "export", "--experiment", "x",
                             "--redis", url, "-o", str(tmp_path / "x.jsonl")],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    _one_line_exit_2(export, "malformed Redis URL")


def test_item13_windows_that_select_nothing_say_so() -> None:
    now = time.time()
    _one_line_exit_2(_cli("--experiment", "x", "--synthetic", "10", "--since", str(now),
                          "--until", str(now - 3600)), "--since", "after", "--until")
    _one_line_exit_2(_cli("--experiment", "x", "--synthetic", "10", "--since",
                          str(now + 7 * 86400)), "--since", "future")
    _one_line_exit_2(_cli("--experiment", "x", "--synthetic", "10", "--until",
                          str(now * 1000)), "--until", "milliseconds")


def test_item13_an_empty_window_over_data_says_where_the_data_is(tmp_path: Path) -> None:
    recs, outs = dataset(SynthSpec(n=500, seed=132))
    pairs, outcomes = _write(tmp_path / "p.jsonl", recs), _write(tmp_path / "o.jsonl", outs)
    p = _cli("--experiment", "synth", "--pairs", str(pairs), "--outcomes", str(outcomes),
             "--until", str(recs[0]["ts"] - 3600), "--format", "json")  # fmt: skip
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert r["counts"]["records"] == 0 and r["counts"]["outside_window"] == 500
    assert any("500 records outside" in x for x in r["decision"]["reasons"])


def test_item13_the_default_body_limit_holds_the_default_outcome_rows() -> None:
    rows = AdminConfig().outcomes_max_rows
    # a row with every field, uuids for ids: about 200 bytes
    typical = [{"id": f"0f8fad5b-d9cb-469f-a165-70867{i:07d}", "experiment": "checkout-ranker",
                "request_id": "7c9e6679-7425-40de-944b-e07fc1f90ae7", "unit": "user-1234567",
                "metric": "revenue", "value": 123.45, "ts": 1764500000.123}
               for i in range(rows + 1)]  # fmt: skip
    body = _lines(typical[:rows])
    assert len(body) <= LimitsConfig().max_body
    ok, bad = parse_outcomes(_lines(typical), "checkout-ranker")
    assert len(ok) == rows and len(bad) == 1


def test_no_nan_leaks_into_data_quality() -> None:
    r = build_report([], [], experiment="synth")
    assert r["data_quality"]["records"]["invalid_share"] is None
    assert not any(isinstance(v, float) and math.isnan(v)
                   for v in r["data_quality"]["records"].values())  # fmt: skip
