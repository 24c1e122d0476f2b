"""A multi-challenger canary: the pure state machine as tables of cases, and the routers'
reconciliation against a real in-process router with three challengers."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from router.promotion import machine
from router.promotion.routers import RouterFleet, RouterRejected, challenger_ops
from router.promotion.state import (
    AWAITING,
    CANARY,
    PROMOTED,
    ROLLED_BACK,
    SHADOW,
    Pin,
    Share,
    State,
    Target,
)
from tests.helpers import TOKEN, InProcessRouter
from tests.promotion.test_machine import ANSWERS, CHAMP, cfg
from tests.sidecar.test_abn_proxy import _abn_config, _servers

PINS = {n: Pin(f"http://{n}:1", f"v-{n}") for n in ("a", "b", "c")}


def started() -> State:
    return machine.start(
        experiment="e", cfg=cfg(), champion=CHAMP, challenger=PINS["a"], routers=["http://r1"],
        policy=None, actor="test", now=1000.0, contenders=list(PINS.items()),
    ).state  # fmt: skip


def arms_verdict(decisions: dict[str, str], winner: str | None = None) -> dict[str, Any]:
    return {
        "action": decisions.get("a", "continue"),
        "reasons": [],
        "gates": [],
        "counts": {},
        "arms": {
            "decisions": {
                n: {"action": a, "reasons": [f"{n} says {a}"]} for n, a in decisions.items()
            },
            "ranking": sorted(decisions),
            "winner": winner,
        },
    }


def shares(state: State) -> dict[str, tuple[float, float]]:
    return {s.name: (s.split, s.mirror) for s in machine.desired(state).challengers}


def test_every_challenger_shares_each_step() -> None:
    s = started()
    assert s.stage == SHADOW and [c.name for c in s.contenders] == ["a", "b", "c"]
    assert shares(s) == {n: (0.0, 1.0) for n in "abc"}  # shadow: each mirrored at 100%
    s = machine.on_verdict(s, arms_verdict({n: "promote" for n in "abc"}, "a"), now=1100).state
    assert s.stage == CANARY and s.step == 1
    # 5% in total: 166 buckets each (rounded down), so the shares never sum over the step
    assert shares(s) == {n: (0.0166, 0.0) for n in "abc"}
    assert State.from_json(s.to_json()) == s


def test_a_loser_is_dropped_at_once_and_the_others_go_on() -> None:
    first = arms_verdict({"a": "continue", "b": "continue", "c": "promote"}, "c")
    s = machine.on_verdict(started(), first, now=1100).state
    t = machine.on_verdict(s, arms_verdict({"a": "continue", "b": "rollback", "c": "continue"}),
                           now=1200)  # fmt: skip
    assert [e.event for e in t.events] == ["challenger_dropped"]
    assert t.events[0].data["challenger"] == "b" and "b says rollback" in t.events[0].data[
        "reasons"][0]  # fmt: skip
    s = t.state
    assert s.stage == CANARY and [c.name for c in s.live_contenders] == ["a", "c"]
    assert shares(s) == {"a": (0.025, 0.0), "b": (0.0, 0.0), "c": (0.025, 0.0)}


def test_every_challenger_dropped_rolls_back() -> None:
    s = started()
    t = machine.on_verdict(s, arms_verdict({n: "rollback" for n in "abc"}), now=1100)
    assert [e.event for e in t.events][:3] == ["challenger_dropped"] * 3
    assert t.events[-1].event == "rollback" and t.state.stage == ROLLED_BACK
    assert shares(t.state) == {n: (0.0, 0.0) for n in "abc"}


def test_one_winner_goes_to_approval_and_promotion() -> None:
    s = started()
    for now in (1100, 1200):  # shadow -> 5% -> 50%
        s = machine.on_verdict(s, arms_verdict({n: "promote" for n in "abc"}, "b"), now=now).state
    assert s.step == 2
    t = machine.on_verdict(s, arms_verdict({"a": "hold", "b": "promote", "c": "continue"}, "b"),
                           now=1300)  # fmt: skip
    assert [e.event for e in t.events] == ["challenger_dropped", "challenger_dropped",
                                           "approval_requested"]  # fmt: skip
    s = t.state
    assert s.stage == AWAITING and s.challenger == PINS["b"]
    assert [c.name for c in s.live_contenders] == ["b"]
    assert all("lost to b" in c.dropped["reasons"][0] for c in s.contenders if c.dropped)
    assert shares(s) == {"a": (0.0, 0.0), "b": (0.5, 0.0), "c": (0.0, 0.0)}
    s = machine.approve(s, reviewer="rev", answers=ANSWERS, now=1400).state
    assert s.stage == PROMOTED and s.champion == PINS["b"] and s.rollback_target == CHAMP
    target = machine.desired(s)
    assert target.champion == PINS["b"] and shares(s) == {n: (0.0, 0.0) for n in "abc"}


def test_no_winner_waits_and_all_holding_holds() -> None:
    s = started()
    t = machine.on_verdict(s, arms_verdict({"a": "continue", "b": "hold", "c": "continue"}),
                           now=1100)  # fmt: skip
    assert t.events == () and t.state.stage == SHADOW and t.state.held is None
    t = machine.on_verdict(t.state, arms_verdict({n: "hold" for n in "abc"}), now=1200)
    assert [e.event for e in t.events] == ["hold"] and t.state.held is not None


def test_challenger_ops_lower_first_and_name_an_unknown_challenger() -> None:
    target = Target(0.1, 0.0, CHAMP, PINS["a"],
                    (Share("a", 0.1, 0.0), Share("b", 0.0, 0.0), Share("c", 0.3, 0.5)))  # fmt: skip
    live = {"challengers": [{"name": "a", "split": 0.1, "mirror": 0.0},
                            {"name": "b", "split": 0.4, "mirror": 0.0},
                            {"name": "c", "split": 0.2, "mirror": 0.0}]}  # fmt: skip
    ops = challenger_ops(target, live)
    assert [(o["name"], o["split"]) for o in ops] == [("b", 0.0), ("c", 0.3)]
    with pytest.raises(RouterRejected, match="no challenger named 'c'"):
        challenger_ops(target, {"challengers": live["challengers"][:2]})


async def test_the_fleet_moves_a_real_router_to_each_target(tmp_path: Path, redis_url: str) -> None:
    async with _servers("champion", "a", "b", "c") as urls:
        rc = _abn_config(urls, redis_url, tmp_path, [{"name": n} for n in "abc"])
        async with (
            InProcessRouter(rc, tmp_path / "run", redis_url) as router,
            RouterFleet([router.url], TOKEN) as fleet,
        ):
            names = [n for n, _ in await fleet.current_challengers()]
            assert names == ["a", "b", "c"]
            s = machine.start(
                experiment="e", cfg=cfg(), champion=CHAMP, challenger=PINS["a"],
                routers=[router.url], policy=None, actor="test", now=1000.0,
                contenders=await fleet.current_challengers(),
            ).state  # fmt: skip
            s = machine.on_verdict(s, arms_verdict({n: "promote" for n in "abc"}, "a"),
                                   now=1100).state  # fmt: skip
            won = arms_verdict({"a": "promote", "b": "continue", "c": "continue"}, "a")
            s = machine.on_verdict(s, won, now=1200).state
            lost = arms_verdict({"a": "continue", "b": "rollback", "c": "continue"})
            champ_pin = Pin(urls["champion"], "champ-1")  # the router's champion, unchanged
            for state in (s, machine.on_verdict(s, lost, now=1300).state):
                state = replace(state, champion=champ_pin)
                applied = await fleet.reconcile(machine.desired(state), note="test")
                assert [a.result for a in applied] == ["applied"], applied
                live = {c.name: (c.split, c.mirror) for c in router.app.state.challengers}
                assert live == shares(state)
                again = await fleet.reconcile(machine.desired(state), note="test")
                assert [a.result for a in again] == ["unchanged"]  # idempotent


def test_each_challenger_gets_its_own_view_for_the_fast_guardrails() -> None:
    from router.promotion.contest import ArmTallies, arm_sides

    ok = {"status": 200, "latency_ms": 5.0, "error": None}
    bad = {"status": 500, "latency_ms": 5.0, "error": None}
    recs = [
        {"served": "champion", "champion": ok, "challenger": ok, "arm": "a", "shadows": {"b": bad}},
        {"served": "challenger", "variant": "b", "arm": "b", "champion": None, "challenger": bad},
        {"served": "challenger", "variant": "a", "arm": "a", "champion": ok, "challenger": ok},
        {"served": "champion", "champion": ok, "challenger": None},
        {"served": "challenger", "variant": "a", "forced": True, "challenger": bad},
    ]
    assert arm_sides(recs[0], "b") == {"champion": ok, "challenger": bad}
    assert arm_sides(recs[1], "a") is None and arm_sides(recs[4], "a") is None
    tallies = ArmTallies(["a", "b"])
    tallies.add(recs)
    a, b = tallies.states["a"], tallies.states["b"]
    assert (a.records, a.challenger.calls, a.challenger.errors) == (3, 2, 0)
    assert (b.records, b.challenger.calls, b.challenger.errors) == (3, 2, 2)
    # single-challenger records (no arm) belong to the one challenger
    assert arm_sides({"served": "champion", "champion": ok, "challenger": ok},
                     "challenger") == {"champion": ok, "challenger": ok}  # fmt: skip


def test_a_guardrail_breach_drops_that_challenger_and_the_last_rolls_back() -> None:
    s = started()
    result = {"breached": True, "reasons": ["error rate +0.3"], "checks": [], "counts": {}}
    t = machine.on_contender_guardrails(s, "b", result, now=1050)
    assert t is not None and [e.event for e in t.events] == ["challenger_dropped"]
    assert t.events[0].data["reasons"] == ["b: guardrail: error rate +0.3"]
    s = t.state
    assert [c.name for c in s.live_contenders] == ["a", "c"] and s.stage == SHADOW
    assert machine.on_contender_guardrails(s, "b", result, now=1060) is None  # already out
    s = machine.on_contender_guardrails(s, "a", result, now=1070).state  # type: ignore[union-attr]
    t = machine.on_contender_guardrails(s, "c", result, now=1080)
    assert t is not None and t.state.stage == ROLLED_BACK
    assert [e.event for e in t.events] == ["challenger_dropped", "rollback"]
