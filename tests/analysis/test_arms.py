"""A/B/n analysis: a view per challenger, forced records, crossover units, the arms section."""

from __future__ import annotations

import copy
import random
from typing import Any

import pytest
from statsmodels.stats.multitest import multipletests

from router.analysis import build_report, parse_policy
from router.analysis.accumulate import Accumulator
from router.analysis.arms import ArmSet
from router.analysis.frames import RECORD_SCHEMA, prepare_records, records_chunk
from router.analysis.outcomes_index import OutcomeIndex
from router.analysis.policy import Policy
from tests.analysis.test_report import assert_close, without_time
from tests.analysis.test_report import strict_json as validated

T0 = 1.75e9
RATES = {"champion": 0.30, "a": 0.36, "b": 0.30}
SHARES = {"a": 0.25, "b": 0.25}


def _side(version: str, score: float, status: int = 200) -> dict[str, Any]:
    return {"version": version, "status": status, "latency_ms": 10.0 + score, "prediction": score,
            "error": None}  # fmt: skip


def abn_stream(
    n_units: int = 1600, seed: int = 7
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Records of an A/B/n experiment (champion 50%, a 25%, b 25%; champion-served requests of
    every other unit mirrored to both a and b) and a conversion outcome per request."""
    rng = random.Random(seed)
    recs: list[dict[str, Any]] = []
    outs: list[dict[str, Any]] = []
    for i in range(n_units):
        unit = f"u{i}"
        r = rng.random()
        variant = "champion" if r < 0.5 else ("a" if r < 0.75 else "b")
        for j in range(2):
            rid = f"r{i}-{j}"
            rec: dict[str, Any] = {
                "v": 1, "experiment": "e", "request_id": rid, "ts": T0 + i + j / 10,
                "unit": unit, "bucket": i % 10_000, "segment": {"country": "de" if i % 3 else "fr"},
                "contract": None, "champion": None, "challenger": None, "mirrored": False,
            }  # fmt: skip
            if variant == "champion":
                rec["served"] = "champion"
                rec["champion"] = _side("c1", rng.random())
                if i % 2 == 0:
                    rec["mirrored"] = True
                    rec["challenger"] = _side("va", rng.random())
                    rec["arm"] = "a"
                    rec["shadows"] = {"b": _side("vb", rng.random())}
            else:
                rec["served"] = "challenger"
                rec["variant"] = variant
                rec["arm"] = variant
                rec["challenger"] = _side(f"v{variant}", rng.random())
            recs.append(rec)
            conv = 1.0 if rng.random() < RATES[variant] else 0.0
            outs.append({"v": 1, "experiment": "e", "request_id": rid, "unit": None,
                         "metric": "conversion", "value": conv, "ts": T0 + i + 0.5})  # fmt: skip
    return recs, outs


def legacy_view(recs: list[dict[str, Any]], arm: str) -> list[dict[str, Any]]:
    """Challenger ``arm``'s view written out by hand as a two-arm stream (the reference)."""
    out = []
    for rec in recs:
        served = rec.get("variant", rec["served"])
        if served not in ("champion", arm):
            continue
        r = copy.deepcopy(rec)
        for k in ("variant", "arm", "shadows"):
            r.pop(k, None)
        if served == "champion":
            if rec.get("arm") == arm:
                pass
            elif arm in (rec.get("shadows") or {}):
                r["challenger"] = rec["shadows"][arm]
            else:
                r["challenger"] = None
            r["mirrored"] = r["challenger"] is not None
            if rec.get("arm") != arm:
                r["contract"] = None
        out.append(r)
    return out


POLICY = parse_policy({"primary_metric": {"name": "conversion"}, "min_samples": 10}, "test")


def test_each_challenger_is_its_view_of_the_stream() -> None:
    recs, outs = abn_stream()
    rep = validated(build_report(recs, outs, experiment="e", policy=POLICY, shares=SHARES))
    arms = rep["arms"]
    assert arms["challengers"] == ["a", "b"]
    for arm in ("a", "b"):
        ref = without_time(build_report(legacy_view(recs, arm), outs, experiment="e",
                                        policy=POLICY, split=1 / 3))  # fmt: skip
        got = arms["comparisons"][arm]
        assert got["counts"]["per_variant"] == ref["counts"]["per_variant"]
        assert got["counts"]["mirrored_pairs"] == ref["counts"]["mirrored_pairs"]
        assert got["counts"]["units"] == ref["counts"]["units"]
        for k in ("absolute", "relative", "ci", "p_value"):
            assert_close(got["metrics"]["conversion"][k], ref["metrics"]["conversion"]["uplift"][k])
        assert got["decision"]["action"] in {"promote", "continue", "hold", "rollback"}
        assert got["split"] == pytest.approx(1 / 3)  # its share over its and the champion's
    # the top level is the first challenger's full comparison
    ref_a = without_time(build_report(legacy_view(recs, "a"), outs, experiment="e",
                                      policy=POLICY, split=1 / 3))  # fmt: skip
    top = without_time(rep)
    for key in ("latency", "errors", "divergence", "metrics", "srm"):
        assert_close(top[key], ref_a[key], key)


def test_srm_across_all_arms_and_holm_across_challengers_and_metrics() -> None:
    recs, outs = abn_stream()
    rep = build_report(recs, outs, experiment="e", policy=POLICY, shares=SHARES)
    srm = rep["arms"]["srm"]
    assert srm["state"] == "ok" and srm["mismatch"] is False
    assert sum(srm["observed"].values()) == 1600
    wrong = build_report(recs, outs, experiment="e", policy=POLICY, shares={"a": 0.1, "b": 0.1})
    assert wrong["arms"]["srm"]["mismatch"] is True
    unknown = build_report(recs, outs, experiment="e", policy=POLICY)
    assert unknown["arms"]["srm"]["state"] == "not_applicable"
    assert "--shares" in unknown["arms"]["srm"]["reason"]

    table = rep["arms"]["multiple_testing"]["table"]
    ps = [row["p_value"] for row in table]
    expected = multipletests(ps, method="holm")[1]
    assert [row["p_value_holm_family"] for row in table] == pytest.approx(list(expected))
    assert rep["arms"]["multiple_testing"]["family_size"] == len(ps) >= 2


def test_ranking_and_one_winner() -> None:
    recs, outs = abn_stream(n_units=6000)
    policy = parse_policy({"primary_metric": {"name": "conversion"}, "min_samples": 10,
                           "guardrails": {"max_error_rate_delta": None}}, "test")  # fmt: skip
    rep = build_report(recs, outs, experiment="e", policy=policy, shares=SHARES)
    arms = rep["arms"]
    assert arms["ranking"][0] == "a"  # a converts better (0.36 against 0.30)
    actions = [d["action"] for d in arms["decisions"].values()]
    assert actions.count("promote") <= 1
    if arms["winner"] is not None:
        assert arms["decisions"][arms["winner"]]["action"] == "promote"
    assert arms["decisions"]["b"]["action"] != "promote"


def test_forced_records_are_counted_and_left_out_of_every_statistic() -> None:
    recs, outs = abn_stream(400)
    forced = []
    for k, rec in enumerate(recs[:60]):
        f = copy.deepcopy(rec)
        f["request_id"] = f"forced-{k}"
        f["forced"] = True
        f["unit"] = f"qa-{k % 3}"
        forced.append(f)
    base = without_time(build_report(recs, outs, experiment="e", policy=POLICY, shares=SHARES))
    mixed = without_time(build_report(recs + forced, outs, experiment="e", policy=POLICY,
                                      shares=SHARES))  # fmt: skip
    assert mixed["counts"].pop("forced")["requests"] == 60
    assert base["counts"].pop("forced")["requests"] == 0
    for key in ("counts", "srm", "latency", "errors", "metrics", "crossover"):
        assert_close(mixed[key], base[key], key)


def test_crossover_units_are_found_reported_and_excluded() -> None:
    recs, outs = abn_stream(400)
    # u1..u5 also show up served by another variant (a client sending another unit id, a salt
    # change...)
    extra = []
    for i in range(1, 6):
        first = next(r for r in recs if r["unit"] == f"u{i}")
        other = "b" if first.get("variant") != "b" else "champion"
        r = copy.deepcopy(first)
        r["request_id"] = f"x{i}"
        if other == "champion":
            r.update(served="champion", champion=_side("c1", 0.5), challenger=None, mirrored=False)
            for k in ("variant", "arm", "shadows"):
                r.pop(k, None)
        else:
            r.update(served="challenger", variant="b", arm="b", champion=None,
                     challenger=_side("vb", 0.5), mirrored=False)  # fmt: skip
            r.pop("shadows", None)
        extra.append(r)
    rep = build_report(recs + extra, outs, experiment="e", policy=POLICY, shares=SHARES)
    cross = rep["crossover"]
    assert cross["units"] == 5
    assert sorted(e["unit"] for e in cross["examples"]) == [f"u{i}" for i in range(1, 6)]
    assert sum(cross["by_variants"].values()) == 5
    # out of the unit-level statistics of every view: the SRM counts and the metric's units
    base = build_report(recs, outs, experiment="e", policy=POLICY, shares=SHARES)
    assert sum(rep["arms"]["srm"]["observed"].values()) == 1600 // 4 - 5
    n_base = sum(v["n"] for v in base["metrics"]["conversion"]["variants"].values())
    n_rep = sum(v["n"] for v in rep["metrics"]["conversion"]["variants"].values())
    in_a_view = sum(1 for e in cross["examples"] if set(e["variants"]) <= {"champion", "a"}
                    or "a" in e["variants"] or "champion" in e["variants"])  # fmt: skip
    assert n_rep == n_base - in_a_view
    assert rep["counts"]["units"]["both_variants"] == in_a_view


def test_single_challenger_reports_keep_their_shape() -> None:
    recs, outs = abn_stream(200)
    two = [r for r in legacy_view(recs, "a")]
    rep = validated(build_report(two, outs, experiment="e", policy=POLICY, split=0.5))
    assert "arms" not in rep
    assert rep["crossover"]["units"] == 0 and rep["counts"]["forced"]["requests"] == 0


def test_a_challenger_first_named_on_a_later_page_asks_for_a_second_read() -> None:
    recs, outs = abn_stream(200)
    policy = Policy()
    oi = OutcomeIndex()
    oi.add_all(outs, "e")
    early = [r for r in recs if r.get("variant") in (None, "a") and not r.get("shadows")]
    late = [r for r in recs if r.get("variant") == "b"]

    def page(rows: list[dict[str, Any]]) -> Any:
        return prepare_records(records_chunk(rows)[0], RECORD_SCHEMA)

    aset = ArmSet(lambda: Accumulator(policy, oi, experiment="e"))
    aset.add_page(page(early))
    assert not aset.restart
    aset.add_page(page(late))
    assert aset.restart and aset.restart_arms() == ["a", "b"]
    again = ArmSet(lambda: Accumulator(policy, oi, experiment="e"), aset.restart_arms())
    again.add_page(page(early))
    again.add_page(page(late))
    assert not again.restart and again.names == ["a", "b"]
    assert again.arms["b"].requests[1] == len(late)
    assert again.arms["a"].requests[0] == again.arms["b"].requests[0]  # the champion's


def test_markdown_and_html_show_the_challengers() -> None:
    from router.analysis.render import to_markdown
    from router.analysis.render_html import to_html

    recs, outs = abn_stream(300)
    recs[0] = dict(recs[0], forced=True)
    rep = build_report(recs, outs, experiment="e", policy=POLICY, shares=SHARES)
    md = to_markdown(rep)
    assert "## Challengers" in md and "p (Holm, family)" in md
    assert "forced requests (QA), left out of every statistic: 1" in md
    assert "Challengers" in to_html(rep)
