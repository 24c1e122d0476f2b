"""Sample ratio by segment value: a mismatch confined to one platform is found and named, the
family-wise false-alarm rate over many values stays at alpha (Holm over always-valid p-values),
and the gate holds."""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from router.analysis import build_report, parse_policy
from router.analysis.sections.srm_segments import segment_tests

FULL = "1" in (os.environ.get("ROUTER_FULL_SIM"), os.environ.get("ROUTER_SIM_FULL"))
T0 = time.time() - 3600


def _records(n: int, ios_challenger_loss: float, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    side = {"version": "1", "status": 200, "latency_ms": 5.0, "prediction": 0.3, "error": None}
    out = []
    platforms = ["ios", "android", "web"]
    for i in range(n):
        plat = platforms[i % 3]
        v = "challenger" if rng.random() < 0.5 else "champion"
        if plat == "ios" and v == "challenger" and rng.random() < ios_challenger_loss:
            continue  # the challenger's iOS units never reach the router
        other = "champion" if v == "challenger" else "challenger"
        out.append({"v": 1, "experiment": "e", "request_id": f"r{i}", "ts": T0 + i * 0.01,
                    "unit": f"u{i}", "bucket": 0, "served": v, "mirrored": False,
                    "segment": {"platform": plat, "region": ["eu", "us"][i % 2]}, v: side,
                    other: None, "contract": None})  # fmt: skip
    return out


def test_mismatch_in_one_platform_is_named_and_holds() -> None:
    recs = _records(12_000, 0.15, seed=1)
    rep = build_report(recs, [], experiment="e", split=0.5, policy=parse_policy({}))
    bs = rep["srm"]["by_segment"]
    assert bs["state"] == "ok" and bs["tested"] == 5
    assert bs["mismatched"] == ["platform=ios"]
    top = bs["rows"][0]
    assert (top["field"], top["value"], top["mismatch"]) == ("platform", "ios", True)
    assert top["sequential_p_holm"] < 0.001
    gate = next(g for g in rep["gates"] if g["name"] == "srm_segments")
    assert gate["state"] == "fail" and "platform=ios" in gate["reason"]
    assert rep["decision"]["action"] in ("hold", "rollback")


def test_balanced_split_passes_and_small_values_are_skipped() -> None:
    recs = _records(3_000, 0.0, seed=2)
    pol = parse_policy({"srm": {"min_segment_units": 1200}})
    rep = build_report(recs, [], experiment="e", split=0.5, policy=pol)
    bs = rep["srm"]["by_segment"]
    assert bs["mismatched"] == [] and bs["tested"] == 2  # the regions; platforms have 1000
    assert bs["skipped_small"] == {"platform": 3}
    assert next(g for g in rep["gates"] if g["name"] == "srm_segments")["state"] == "pass"
    no_split = build_report(recs, [], experiment="e", policy=pol)
    assert no_split["srm"]["by_segment"]["state"] == "not_applicable"
    off = build_report(recs, [], experiment="e", split=0.5,
                       policy=parse_policy({"srm": {"by_segment": False}}))  # fmt: skip
    assert "by_segment" not in off["srm"]
    assert all(g["name"] != "srm_segments" for g in off["gates"])


def test_simulated_family_wise_false_alarms_stay_below_alpha() -> None:
    # 20 segment values, no mismatch anywhere: Holm over always-valid p-values keeps the chance
    # of any alarm at most alpha (here 0.05 to make it measurable; the policy's default is 0.001)
    reps = 2_000 if FULL else 400
    pol = parse_policy({"srm": {"alpha": 0.05, "min_share_diff": 0.0}})
    rng = np.random.default_rng(5)
    alarms = 0
    uncorrected = 0
    for _ in range(reps):
        per = {("seg", str(k)): [0, 0] for k in range(20)}
        for k in range(20):
            n = int(rng.integers(200, 2000))
            c = int(rng.binomial(n, 0.3))
            per[("seg", str(k))] = [n - c, c]
        res = segment_tests(per, 0.3, pol)
        alarms += bool(res["mismatched"])
        uncorrected += any(r["sequential_p_value"] < 0.05 for r in res["rows"])
    assert alarms / reps <= 0.05
    assert alarms <= uncorrected


def test_controller_looks_keep_each_values_smallest_p_and_re_holm() -> None:
    """Across the promotion controller's looks of one step, each segment value's always-valid
    p-value is kept at its running minimum (an always-valid p-value's running minimum is one
    too) and Holm is applied afresh over those: a mismatch an earlier look proved is not
    forgotten because this look's sample is quieter, and it still needs this look's share
    deviation above srm.min_share_diff."""
    from router.analysis.gates.running import apply_running

    rep = build_report(_records(3000, 0.15, seed=3), [], experiment="e", split=0.5,
                       policy=parse_policy({}))  # fmt: skip
    gate = next(g for g in rep["gates"] if g["name"] == "srm_segments")
    assert gate["state"] == "pass"
    gates, decision, running = apply_running(rep, None)
    first = running["srm_segments"]
    assert first["looks"] == 1 and set(first["values"]) >= {"platform=ios", "region=eu"}
    # an earlier look of this step had ios at p = 1e-7: Holm over 5 values gives 5e-7 < alpha
    prior = {"srm_segments": {"values": {"platform=ios": 1e-7}, "looks": 3, "p_value": 5e-7}}
    gates, decision, running = apply_running(rep, prior)
    g = next(x for x in gates if x["name"] == "srm_segments")
    assert g["state"] == "fail" and "platform=ios" in g["reason"]
    assert g["p_value"] == 5e-7 and decision["action"] in ("hold", "rollback")
    assert running["srm_segments"]["values"]["platform=ios"] == 1e-7
    assert running["srm_segments"]["looks"] == 4
    # the same small p on a value whose deviation now is below min_share_diff: no mismatch
    quiet = _records(3000, 0.0, seed=4)
    rep2 = build_report(quiet, [], experiment="e", split=0.5,
                        policy=parse_policy({"srm": {"min_share_diff": 0.05}}))  # fmt: skip
    gates2, _d, _r = apply_running(rep2, prior)
    assert next(x for x in gates2 if x["name"] == "srm_segments")["state"] == "pass"
