"""The noise floor end to end: a deliberately nondeterministic champion asked twice through the
real router (real model servers, real Redis), the records it writes, and the analyzer's
noise-floor gate passing an identical challenger that the absolute flip-rate gate fails."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from router.analysis import build_report, parse_policy
from router.capture.records import ContractRules, contract_diff
from router.demo.models import CHAMPION_WEIGHTS, ModelServer, ModelSpec
from router.sidecar.assign import bucket
from tests.helpers import (
    InProcessRouter,
    config_dict,
    make_config,
    metric_sum,
    parse_metrics,
    read_stream,
    wait_for,
)

N = 400


def _body(i: int, rng: random.Random) -> bytes:
    # features near the decision boundary, so a noisy logit flips some decisions
    features = [rng.uniform(-1, 1), rng.uniform(-1, 1), 0.3, 0.0]
    return orjson.dumps({"user": {"id": f"u{i}"}, "features": features})


async def _run(tmp_path: Path, redis_url: str, **exp: Any) -> tuple[list[dict[str, Any]], Any]:
    champ_spec = ModelSpec("champ-1", CHAMPION_WEIGHTS, noise_sd=0.4, stamp=True, seed=1)
    # the challenger is the same model, just as nondeterministic
    chall_spec = ModelSpec("chall-2", CHAMPION_WEIGHTS, noise_sd=0.4, stamp=True, seed=2)
    champion = await ModelServer(champ_spec).start()
    challenger = await ModelServer(chall_spec).start()
    cfg = make_config(config_dict(champion.url, challenger.url, redis_url, tmp=tmp_path, **exp))
    rng = random.Random(7)
    try:
        async with (
            InProcessRouter(cfg, tmp_path / "run", redis_url) as router,
            aiohttp.ClientSession() as s,
        ):
            for i in range(N):
                async with s.post(f"{router.url}/predict", data=_body(i, rng)) as r:
                    assert r.status == 200
                    assert r.headers["X-Router-Variant"] == "champion"
                    assert (await r.json())["model"] == "champ-1"
            assert await wait_for(lambda: len(read_stream(redis_url, "t:pairs")) == N, 10.0)
            async with s.get(f"{router.url}/metrics") as r:
                metrics = parse_metrics(await r.text())
    finally:
        await champion.stop()
        await challenger.stop()
    return read_stream(redis_url, "t:pairs"), (champ_spec, chall_spec, metrics)


async def test_noise_floor_pairs_are_recorded_never_answered(
    tmp_path: Path, redis_url: str
) -> None:
    contract = {"ignore": ["served_at"], "compare_values": True, "tolerance": {"score": 1e-9}}
    recs, (champ, chall, metrics) = await _run(
        tmp_path, redis_url, mirror=1.0, noise_floor=0.5, contract=contract
    )
    sampled = {f"u{i}" for i in range(N) if bucket("test-salt:noise", f"u{i}") < 5000}
    assert 150 < len(sampled) < 250
    with_repeat = [r for r in recs if "champion_repeat" in r]
    assert {r["unit"] for r in with_repeat} == sampled
    # the client saw only the served champion; the repeat went to the champion as a shadow
    assert champ.calls == N + len(sampled) and champ.shadow_calls == len(sampled)
    assert chall.shadow_calls == N
    assert metric_sum(metrics, "router_shadow_dispatched_total", variant="champion_repeat") == len(
        sampled
    )
    for r in with_repeat:
        rep = r["champion_repeat"]
        assert rep["version"] == "champ-1" and rep["status"] == 200 and rep["error"] is None
        assert 0 < rep["prediction"] < 1 and r["mirrored"] is True and r["challenger"] is not None
        # served_at differs on every call but is ignored; the score differs beyond 1e-9
        ct = r["contract_repeat"]
        assert ct is None or ct == {
            "missing": [],
            "extra": [],
            "retyped": [],
            "changed": ct["changed"],
        }
        assert ct is not None and "score" in ct["changed"] and "served_at" not in ct["changed"]
    for r in recs:
        if "champion_repeat" not in r:
            assert "contract_repeat" not in r

    # the analyzer: the identical challenger flips decisions about as often as the champion
    # flips its own; the absolute gate fails it, the noise-relative gate passes it
    pol = parse_policy(
        {
            "min_samples": 10,
            "divergence": {
                "limits": {
                    "flip_rate": {"max": 0.01, "max_noise_multiple": 2.0},
                    "mean_abs_diff": {"max_noise_multiple": 2.0},
                }
            },
        }
    )
    rep = build_report(recs, [], experiment="t", policy=pol)
    nf = rep["noise_floor"]
    assert nf["state"] == "ok" and nf["pairs"] == len(sampled)
    assert nf["measures"]["flip_rate"] > 0.02 and rep["divergence"]["flip_rate"]["0.5"] > 0.02
    assert 0.5 < nf["multiple"]["flip_rate"] < 2.0
    assert 0.5 < nf["multiple"]["mean_abs_diff"] < 2.0
    gates = {g["name"]: g for g in rep["gates"]}
    assert gates["divergence_flip_rate"]["state"] == "fail"
    assert gates["divergence_flip_rate_vs_noise"]["state"] == "pass"
    assert gates["divergence_mean_abs_diff_vs_noise"]["state"] == "pass"
    # contract values: the score changes for both, as often (not beyond the noise)
    row = next(c for c in nf["contract"] if c["path"] == "score" and c["change"] == "changed")
    assert row["noise_share"] > 0.9 and row["challenger_share"] > 0.9


async def test_without_noise_floor_records_are_unchanged(tmp_path: Path, redis_url: str) -> None:
    recs, (champ, _chall, _m) = await _run(tmp_path, redis_url, mirror=0.0)
    assert champ.calls == N and champ.shadow_calls == 0
    assert all("champion_repeat" not in r and "contract_repeat" not in r for r in recs)
    rep = build_report(recs, [], experiment="t")
    assert rep["noise_floor"]["state"] == "no_pairs"


async def test_relative_gate_fails_a_truly_different_challenger(
    tmp_path: Path, redis_url: str
) -> None:
    champ_spec = ModelSpec("champ-1", CHAMPION_WEIGHTS, noise_sd=0.05, seed=1)
    chall_spec = ModelSpec("chall-2", (1.5, 0.4, -0.9, 0.0), noise_sd=0.05, seed=2)
    champion = await ModelServer(champ_spec).start()
    challenger = await ModelServer(chall_spec).start()
    d = config_dict(champion.url, challenger.url, redis_url, tmp=tmp_path, mirror=1.0,
                    noise_floor=1.0)  # fmt: skip
    rng = random.Random(3)
    try:
        async with (
            InProcessRouter(make_config(d), tmp_path / "run", redis_url) as router,
            aiohttp.ClientSession() as s,
        ):
            for i in range(200):
                async with s.post(f"{router.url}/predict", data=_body(i, rng)) as r:
                    assert r.status == 200
            assert await wait_for(lambda: len(read_stream(redis_url, "t:pairs")) == 200, 10.0)
    finally:
        await champion.stop()
        await challenger.stop()
    recs = read_stream(redis_url, "t:pairs")
    pol = parse_policy({"divergence": {"limits": {"flip_rate": {"max_noise_multiple": 3.0}}}})
    rep = build_report(recs, [], experiment="t", policy=pol)
    g = next(g for g in rep["gates"] if g["name"] == "divergence_flip_rate_vs_noise")
    assert g["state"] == "fail" and rep["decision"]["action"] == "hold"
    assert rep["noise_floor"]["multiple"]["flip_rate"] is None or (
        rep["noise_floor"]["multiple"]["flip_rate"] > 3.0
    )


@pytest.mark.parametrize(
    "a,b,rules,want",
    [
        ({"s": 0.5}, {"s": 0.5000001}, ContractRules(compare_values=True), ["s"]),
        ({"s": 0.5}, {"s": 0.5000001}, ContractRules((), True, (("s", 1e-6),)), []),
        ({"s": 1, "t": 2}, {"s": 1, "t": 3}, ContractRules((), True, (), 5.0), []),
        ({"p": [1, 2]}, {"p": [1, 2, 3]}, ContractRules(compare_values=True), ["p[]"]),
        ({"p": [{"x": 1}]}, {"p": [{"x": 2}]}, ContractRules(compare_values=True), ["p[].x"]),
        ({"a": "x", "b": True}, {"a": "y", "b": 1}, ContractRules(compare_values=True), ["a"]),
        (
            {"m": {"t": 1}, "s": 1},
            {"m": {"t": 2}, "s": 1},
            ContractRules(ignore=("m",), compare_values=True),
            [],
        ),
    ],
)
def test_contract_rules(a: Any, b: Any, rules: ContractRules, want: list[str]) -> None:
    got = contract_diff(a, b, rules)
    changed = [] if got is None else got.get("changed", [])
    assert changed == want


def test_contract_ignore_drops_shape_changes_and_old_form_is_unchanged() -> None:
    a, b = {"s": 1, "meta": {"t": 1}}, {"s": 1, "meta": {"t": "x", "u": 2}, "z": 0}
    assert contract_diff(a, b) == {
        "missing": [],
        "extra": ["meta.u", "z"],
        "retyped": ["meta.t"],
    }
    assert contract_diff(a, b, ContractRules(ignore=("meta",))) == {
        "missing": [],
        "extra": ["z"],
        "retyped": [],
    }
    assert contract_diff(a, {"s": 2, "meta": {"t": 1}}) is None  # values not compared by default


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    from router.config import ConfigError

    base = config_dict("http://127.0.0.1:1", "http://127.0.0.1:2", None, tmp=tmp_path)
    with pytest.raises(ConfigError, match=r"experiment\.noise_floor"):
        make_config(base | {"experiment": base["experiment"] | {"noise_floor": 1.5}})
    bad = {"tolerance": {"score": -1.0}}
    with pytest.raises(ConfigError, match=r"experiment\.contract\.tolerance"):
        make_config(base | {"experiment": base["experiment"] | {"contract": bad}})
    with pytest.raises(ConfigError, match=r"experiment\.contract\.ignored"):
        make_config(base | {"experiment": base["experiment"] | {"contract": {"ignored": []}}})
