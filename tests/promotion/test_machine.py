"""The promotion state machine as tables of cases (pure, no I/O)."""

from __future__ import annotations

import pytest

from router.promotion import machine
from router.promotion.approval import validate_answers
from router.promotion.config import parse_promotion_config
from router.promotion.machine import TransitionError
from router.promotion.state import AWAITING, PROMOTED, ROLLED_BACK, SHADOW, Pin, State

CHAMP = Pin("http://champ:1", "champ-1")
CHALL = Pin("http://chall:2", "chall-2")
ANSWERS = validate_answers(
    {
        "model_card_reviewed": True,
        "disaggregated_results_checked": True,
        "known_limitations_acknowledged": True,
        "on_call_in_place": True,
        "on_call_contact": "@oncall",
    }
)


def cfg(**over: object) -> object:
    base: dict[str, object] = {
        "steps": [
            {"name": "shadow", "split": 0.0, "mirror": 1.0, "min_duration_s": 10},
            {"split": 0.05, "min_duration_s": 10},
            {"split": 0.5, "min_duration_s": 10, "max_duration_s": 100},
        ],
        "rollback_mirror": 0.2,
    }
    base.update(over)
    return parse_promotion_config(base)


def started(**over: object) -> State:
    t = machine.start(
        experiment="e",
        cfg=cfg(**over),
        champion=CHAMP,
        challenger=CHALL,  # type: ignore[arg-type]
        routers=["http://r1"],
        policy="p.yaml",
        actor="test",
        now=1000.0,
    )
    return t.state


def verdict(action: str, *reasons: str) -> dict[str, object]:
    gates = [{"name": "g", "passed": action != "rollback", "value": 0.1, "threshold": 0.2}]
    return {"action": action, "reasons": list(reasons), "gates": gates, "counts": {"n": 5}}


def test_start_is_shadow_with_mirror_and_emits_step_changed() -> None:
    t = machine.start(
        experiment="e",
        cfg=cfg(),
        champion=CHAMP,
        challenger=CHALL,  # type: ignore[arg-type]
        routers=["http://r1"],
        policy=None,
        actor="test",
        now=5.0,
    )
    assert t.state.stage == SHADOW and t.state.step == 0
    assert [e.event for e in t.events] == ["step_changed"]
    target = machine.desired(t.state)
    assert (target.split, target.mirror, target.champion, target.challenger) == (
        0.0,
        1.0,
        CHAMP,
        CHALL,
    )


@pytest.mark.parametrize(
    ("elapsed", "last", "due"),
    [(5.0, None, False), (10.0, None, True), (20.0, 1015.0, False), (20.0, 1000.0, True)],
)
def test_analysis_due_needs_min_duration_and_interval(
    elapsed: float, last: float | None, due: bool
) -> None:
    s = started()
    s = State.from_json(dict(s.to_json(), last_analysis_at=last))
    assert machine.analysis_due(s, 1000.0 + elapsed, interval_s=10.0) is due


def test_promote_verdicts_walk_the_ramp_then_request_approval() -> None:
    s = started()
    seen = []
    for now in (1010.0, 1020.0, 1030.0):
        t = machine.on_verdict(s, verdict("promote", "all gates pass"), now=now)
        s = t.state
        seen.append((s.stage, s.step, [e.event for e in t.events]))
        if s.stage != AWAITING:
            assert s.step_started_at == now and s.last_analysis_at is None
    assert seen == [
        ("canary", 1, ["step_changed"]),
        ("canary", 2, ["step_changed"]),
        ("awaiting_approval", 2, ["approval_requested"]),
    ]
    assert s.approval is not None and s.approval["requested_at"] == 1030.0
    assert s.approval["gates"][0]["name"] == "g"
    assert machine.desired(s).split == 0.5  # the last step's traffic is held while waiting


def test_continue_waits_and_max_duration_holds_once() -> None:
    s = started()
    s = machine.on_verdict(s, verdict("promote"), now=1010.0).state
    s = machine.on_verdict(s, verdict("promote"), now=1020.0).state  # step 2, max 100 s
    t = machine.on_verdict(s, verdict("continue", "not enough data"), now=1050.0)
    assert t.events == () and t.state.step == 2 and t.state.last_analysis_at == 1050.0
    t = machine.on_verdict(t.state, verdict("continue"), now=1120.0)
    assert [e.event for e in t.events] == ["hold"] and t.state.held is not None
    assert "max_duration_s=100" in t.state.held["reasons"][0]
    again = machine.on_verdict(t.state, verdict("hold"), now=1130.0)
    assert again.events == ()  # no repeated alert
    # a promote verdict does not advance a held ramp; resume does, then promote advances
    still = machine.on_verdict(again.state, verdict("promote"), now=1140.0)
    assert still.state.step == 2 and still.state.stage == "canary"
    r = machine.resume(still.state, actor="op", now=1150.0)
    assert r.state.held is None and r.events[0].event == "resumed"
    assert (
        machine.on_verdict(r.state, verdict("promote"), now=1160.0).state.stage
        == "awaiting_approval"
    )


@pytest.mark.parametrize("stage_steps", [0, 1, 2])
def test_rollback_verdict_at_any_step_sets_split_zero_and_rollback_mirror(stage_steps: int) -> None:
    s = started()
    for i in range(stage_steps):
        s = machine.on_verdict(s, verdict("promote"), now=1010.0 + i).state
    t = machine.on_verdict(s, verdict("rollback", "accuracy worse"), now=1100.0)
    assert t.state.stage == ROLLED_BACK
    ev = t.events[0]
    assert ev.event == "rollback" and ev.data["reasons"] == ["accuracy worse"]
    assert ev.data["gates"][0]["threshold"] == 0.2
    target = machine.desired(t.state)
    assert (target.split, target.mirror) == (0.0, 0.2)
    assert (target.champion, target.challenger) == (CHAMP, CHALL)
    with pytest.raises(TransitionError):
        machine.rollback(t.state, actor="x", reasons=["again"], now=1101.0)


def test_guardrail_breach_rolls_back_but_ok_result_does_nothing() -> None:
    s = started()
    assert machine.on_guardrails(s, {"breached": False}, now=1001.0) is None
    t = machine.on_guardrails(
        s, {"breached": True, "reasons": ["error rate"], "checks": [{"name": "x"}]}, now=1002.0
    )
    assert t is not None and t.state.stage == "rolled_back"
    assert t.events[0].data["reasons"] == ["guardrail: error rate"]
    assert t.events[0].actor == "controller:guardrail"


def awaiting(**over: object) -> State:
    s = started(**over)
    for i in range(3):
        s = machine.on_verdict(s, verdict("promote"), now=1010.0 + i).state
    assert s.stage == AWAITING
    return s


def test_approval_promotes_with_pinned_swap_and_rollback_target() -> None:
    s = awaiting()
    t = machine.approve(s, reviewer="ana", answers=ANSWERS, now=s.approval["requested_at"] + 300)  # type: ignore[index]
    assert [e.event for e in t.events] == ["approved", "promoted"]
    assert t.state.stage == PROMOTED
    assert t.state.champion == CHALL and t.state.challenger == CHAMP
    assert t.state.rollback_target == CHAMP
    assert t.events[0].data["possible_rubber_stamp"] is False
    target = machine.desired(t.state)
    assert (target.split, target.mirror, target.champion) == (0.0, 0.0, CHALL)
    # rolling back after promotion restores the rollback target as champion
    rb = machine.rollback(t.state, actor="op", reasons=["regret"], now=2000.0)
    assert rb.state.champion == CHAMP and rb.state.challenger == CHALL


@pytest.mark.parametrize(("after", "flag"), [(5.0, True), (59.9, True), (60.0, False)])
def test_rubber_stamp_flag(after: float, flag: bool) -> None:
    s = awaiting()
    req = s.approval["requested_at"]  # type: ignore[index]
    t = machine.approve(s, reviewer="ana", answers=ANSWERS, now=req + after)
    assert t.events[0].data["possible_rubber_stamp"] is flag
    assert any("rubber stamp" in r for r in t.events[0].data["reasons"]) is flag


def test_high_stakes_needs_two_distinct_reviewers() -> None:
    s = awaiting(approval={"high_stakes": True})
    req = s.approval["requested_at"]  # type: ignore[index]
    t1 = machine.approve(s, reviewer="ana", answers=ANSWERS, now=req + 100)
    assert t1.state.stage == AWAITING and [e.event for e in t1.events] == ["approved"]
    with pytest.raises(TransitionError, match="distinct"):
        machine.approve(t1.state, reviewer="ana", answers=ANSWERS, now=req + 200)
    t2 = machine.approve(t1.state, reviewer="bo", answers=ANSWERS, now=req + 200)
    assert t2.state.stage == PROMOTED
    assert t2.state.outcome is not None and t2.state.outcome["reviewers"] == ["ana", "bo"]


def test_reject_ends_it_and_approve_outside_awaiting_fails() -> None:
    s = awaiting()
    t = machine.reject(s, reviewer="ana", reason="fairness gap", now=2000.0)
    assert [e.event for e in t.events] == ["rejected", "rollback"]
    assert t.state.stage == ROLLED_BACK and machine.desired(t.state).split == 0.0
    with pytest.raises(TransitionError):
        machine.approve(started(), reviewer="a", answers=ANSWERS, now=1.0)
    with pytest.raises(TransitionError):
        machine.reject(s, reviewer="a", reason="  ", now=1.0)


def test_state_json_roundtrip() -> None:
    s = awaiting()
    assert State.from_json(s.to_json()) == s


def test_admin_view_summarizes_stage_step_and_history() -> None:
    from router.promotion.view import summarize

    s = awaiting()
    v = summarize(s)
    assert (v["stage"], v["step"], v["steps"], v["target"]) == (
        "awaiting_approval",
        2,
        3,
        {"split": 0.5, "mirror": 0.0},
    )
    assert v["approval"]["approved_by"] == [] and len(v["history"]) == 4
