"""The promotion state machine (pure: plain data in, plain data out, no I/O, no clock).

Stages::

    shadow ──► canary (step 1..n) ──► awaiting_approval ──► promoted
       │            │                        │
       └────────────┴────────────────────────┴──► rolled_back   (verdict, guardrail, by hand,
                                                                 or a rejected approval)

Each step is held for its ``min_duration_s`` and until the analyzer's verdict on that step's window
is ``promote``. ``continue`` waits (past ``max_duration_s`` it becomes a hold); ``hold`` pauses the
ramp until ``router canary resume``; ``rollback`` (or a guardrail breach) rolls back at once.

Every function returns a :class:`~router.promotion.state.Transition` (the plain data is in
:mod:`router.promotion.state`): the new state plus the events to audit (and to send as
webhooks). The routers' desired configuration is a function of the state (:func:`desired`), so
applying it is idempotent and a restarted controller just re-applies it.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any

from router.promotion import contest
from router.promotion.approval import Questionnaire, is_rubber_stamp
from router.promotion.config import PromotionConfig
from router.promotion.state import (
    ACTIVE,
    AWAITING,
    CANARY,
    PROMOTED,
    ROLLED_BACK,
    SHADOW,
    Event,
    Pin,
    State,
    Step,
    Target,
    Transition,
)


class TransitionError(Exception):
    """The requested action is not allowed in the current state."""


def steps_from_config(cfg: PromotionConfig) -> tuple[Step, ...]:
    return tuple(
        Step(s.label(i), s.split, s.mirror, s.min_duration_s, s.max_duration_s)
        for i, s in enumerate(cfg.steps)
    )


def _moved(state: State, to: str, *, now: float, event: str, **changes: Any) -> State:
    entry = {
        "at": now,
        "event": event,
        "from": state.stage,
        "to": to,
        "step": changes.get("step", state.step),
    }
    return replace(state, stage=to, updated_at=now, history=(*state.history, entry), **changes)


def start(
    *,
    experiment: str,
    cfg: PromotionConfig,
    champion: Pin,
    challenger: Pin,
    routers: list[str],
    policy: str | None,
    actor: str,
    now: float,
    previous: dict[str, Any] | None = None,
    contenders: list[tuple[str, Pin]] | None = None,
) -> Transition:
    """A new ramp from step 0. ``previous``: the outcome of the run it replaces, if any.
    ``contenders``: the routers' challengers (name, pin) when there are several: they are
    ramped together (:mod:`router.promotion.contest`)."""
    steps = steps_from_config(cfg)
    first = steps[0]
    state = State(
        experiment=experiment,
        stage=first.stage,
        step=0,
        step_started_at=now,
        steps=steps,
        champion=champion,
        challenger=challenger,
        routers=tuple(routers),
        rollback_mirror=cfg.rollback_mirror,
        approvals_required=cfg.approval.required,
        rubber_stamp_s=cfg.approval.rubber_stamp_s,
        created_at=now,
        updated_at=now,
        policy=policy,
        history=({"at": now, "event": "started", "from": None, "to": first.stage, "step": 0},),
        contenders=contest.contenders_of(contenders) if contenders and len(contenders) > 1 else (),
    )
    ev = Event(
        "step_changed",
        actor,
        None,
        first.stage,
        0,
        first.split,
        {
            "step_name": first.name,
            "mirror": first.mirror,
            "routers": list(routers),
            "policy": policy,
            "steps": [asdict(s) for s in steps],
            "reasons": ["canary started"],
            "previous_run": previous,
            "challengers": [c.name for c in state.contenders] or None,
        },
    )
    return Transition(state, (ev,))


def desired(state: State) -> Target:
    """The router configuration implied by ``state`` (applied idempotently)."""
    if state.contenders:
        first = contest.shares(state)[0]
        return Target(first.split, first.mirror, state.champion, state.contenders[0].pin,
                      contest.shares(state))  # fmt: skip
    if state.stage in (SHADOW, CANARY, AWAITING):
        step = state.current_step
        return Target(step.split, step.mirror, state.champion, state.challenger)
    if state.stage == PROMOTED:
        return Target(0.0, 0.0, state.champion, state.challenger)
    return Target(0.0, state.rollback_mirror, state.champion, state.challenger)


def analysis_due(state: State, now: float, interval_s: float) -> bool:
    """A full analysis is due: active ramp stage, step held long enough, interval elapsed."""
    if state.stage not in (SHADOW, CANARY):
        return False
    if now - state.step_started_at < state.current_step.min_duration_s:
        return False
    return state.last_analysis_at is None or now - state.last_analysis_at >= interval_s


def rollback(
    state: State, *, actor: str, reasons: list[str], now: float, data: dict[str, Any] | None = None
) -> Transition:
    """Roll back: split 0 and the rollback mirror on every router. After a promotion, also
    restores the rollback target as champion."""
    if state.stage == ROLLED_BACK:
        raise TransitionError("already rolled back")
    payload = dict(data or {}, reasons=list(reasons))
    changes: dict[str, Any] = {
        "held": None,
        "outcome": {"result": ROLLED_BACK, "reasons": reasons, "at": now, "by": actor},
    }
    if state.stage == PROMOTED:
        if state.rollback_target is None:
            raise TransitionError("promoted without a rollback target")
        changes["champion"] = state.rollback_target
        changes["challenger"] = state.champion
        changes["rollback_target"] = None
        payload["restored_champion"] = state.rollback_target.to_json()
    new = _moved(state, ROLLED_BACK, now=now, event="rollback", **changes)
    payload["target"] = asdict(desired(new))
    ev = Event("rollback", actor, state.stage, ROLLED_BACK, state.step, 0.0, payload)
    return Transition(new, (ev,))


def on_guardrails(state: State, result: dict[str, Any], *, now: float) -> Transition | None:
    """``result``: ``{"breached": bool, "reasons": [...], "checks": [...], "counts": {...}}``."""
    if state.stage not in ACTIVE or not result.get("breached"):
        return None
    return rollback(
        state,
        actor="controller:guardrail",
        reasons=[f"guardrail: {r}" for r in result.get("reasons", [])],
        now=now,
        data={
            "source": "guardrail",
            "gates": result.get("checks", []),
            "counts": result.get("counts", {}),
            "window": result.get("window"),
        },
    )


def on_contender_guardrails(
    state: State, name: str, result: dict[str, Any], *, now: float
) -> Transition | None:
    """A contest's challenger ``name`` breached a fast guardrail (``result`` as for
    :func:`on_guardrails`): it is dropped; the last one dropped rolls the canary back."""
    if state.stage not in ACTIVE or not result.get("breached"):
        return None
    if name not in {c.name for c in state.live_contenders}:
        return None
    new, events = contest.drop_for_guardrail(state, name, result, now=now)
    if new.live_contenders:
        return Transition(new, events)
    t = rollback(new, actor="controller:guardrail", now=now,
                 reasons=["every challenger dropped", *result.get("reasons", [])],
                 data={"source": "guardrail", "gates": result.get("checks", []),
                       "counts": result.get("counts", {})})  # fmt: skip
    return Transition(t.state, (*events, *t.events))


def _verdict_summary(verdict: dict[str, Any], now: float) -> dict[str, Any]:
    return {
        "at": now,
        "action": verdict.get("action"),
        "reasons": list(verdict.get("reasons", [])),
        "gates": list(verdict.get("gates", [])),
        "counts": verdict.get("counts", {}),
        "window": verdict.get("window"),
    }


def on_verdict(state: State, verdict: dict[str, Any], *, now: float) -> Transition:
    """Apply the analyzer's decision for the current step's window.

    ``verdict``: ``{"action", "reasons", "gates", "counts", "window"}`` (from the report; with
    several challengers also ``arms``, see :mod:`router.promotion.contest`)."""
    if state.stage not in (SHADOW, CANARY):
        raise TransitionError(f"no analysis in stage {state.stage}")
    if not state.contenders:
        return apply_verdict(state, verdict, now=now)
    res = contest.resolve(state, verdict, now=now)
    if res.rollback is not None:
        t = rollback(res.state, actor="controller:analysis", reasons=res.rollback, now=now,
                     data=res.data)  # fmt: skip
    else:
        t = apply_verdict(res.state, res.verdict, now=now)
    return Transition(t.state, (*res.events, *t.events))


def apply_verdict(state: State, verdict: dict[str, Any], *, now: float) -> Transition:
    """:func:`on_verdict` for one decision (one challenger, or the contest's combined one)."""
    if state.stage not in (SHADOW, CANARY):
        raise TransitionError(f"no analysis in stage {state.stage}")
    action = verdict.get("action")
    summary = _verdict_summary(verdict, now)
    base = replace(state, last_analysis_at=now, last_verdict=summary, updated_at=now)
    step = state.current_step
    data = {
        "step_name": step.name,
        "gates": summary["gates"],
        "reasons": summary["reasons"],
        "counts": summary["counts"],
        "window": summary["window"],
        "action": action,
    }
    if action == "rollback":
        return rollback(
            base,
            actor="controller:analysis",
            reasons=summary["reasons"] or ["analyzer decided rollback"],
            now=now,
            data=dict(data, source="analysis"),
        )
    if action == "hold":
        return _hold(base, summary["reasons"] or ["analyzer decided hold"], now, data)
    if action == "continue":
        if step.max_duration_s is not None and now - state.step_started_at >= step.max_duration_s:
            reason = (
                f"step '{step.name}' reached max_duration_s={step.max_duration_s:g} "
                "without a verdict"
            )
            return _hold(base, [reason, *summary["reasons"]], now, data)
        return Transition(base)
    if action != "promote":
        raise TransitionError(f"unknown analyzer action {action!r}")
    if state.held:
        return Transition(base)  # a hold needs a human to resume; keep analysing meanwhile
    nxt = state.step + 1
    if nxt < len(state.steps):
        ns = state.steps[nxt]
        new = _moved(
            base,
            ns.stage,
            now=now,
            event="step_changed",
            step=nxt,
            step_started_at=now,
            last_analysis_at=None,
        )
        ev = Event(
            "step_changed",
            "controller:analysis",
            state.stage,
            ns.stage,
            nxt,
            ns.split,
            dict(data, step_name=ns.name, mirror=ns.mirror, completed_step=step.name),
        )
        return Transition(new, (ev,))
    approval = {
        "requested_at": now,
        "required": state.approvals_required,
        "approvals": [],
        "gates": summary["gates"],
        "reasons": summary["reasons"],
        "counts": summary["counts"],
        "window": summary["window"],
    }
    new = _moved(base, AWAITING, now=now, event="approval_requested", approval=approval)
    ev = Event(
        "approval_requested",
        "controller:analysis",
        state.stage,
        AWAITING,
        state.step,
        step.split,
        dict(data, required_reviewers=state.approvals_required),
    )
    return Transition(new, (ev,))


def _hold(state: State, reasons: list[str], now: float, data: dict[str, Any]) -> Transition:
    if state.held:
        return Transition(state)  # already held: no repeated alert
    new = replace(state, held={"at": now, "reasons": reasons}, updated_at=now)
    ev = Event(
        "hold",
        "controller:analysis",
        state.stage,
        state.stage,
        state.step,
        state.current_step.split,
        dict(data, reasons=reasons),
    )
    return Transition(new, (ev,))


def resume(state: State, *, actor: str, now: float) -> Transition:
    if not state.held:
        raise TransitionError("not on hold")
    new = replace(state, held=None, updated_at=now, last_analysis_at=None)
    ev = Event(
        "resumed",
        actor,
        state.stage,
        state.stage,
        state.step,
        state.current_step.split,
        {"reasons": [f"resumed by {actor}"], "held": state.held},
    )
    return Transition(new, (ev,))


def approve(state: State, *, reviewer: str, answers: Questionnaire, now: float) -> Transition:
    """Record one approval; with enough distinct reviewers, promote in the same transition."""
    if state.stage != AWAITING or state.approval is None:
        raise TransitionError(f"no approval pending (stage {state.stage})")
    prior = state.approval["approvals"]
    if any(a["reviewer"] == reviewer for a in prior):
        raise TransitionError(
            f"reviewer {reviewer!r} already approved; a distinct reviewer is required"
        )
    requested_at = float(state.approval["requested_at"])
    flagged = is_rubber_stamp(requested_at, now, state.rubber_stamp_s)
    entry = {
        "reviewer": reviewer,
        "at": now,
        "answers": answers.model_dump(),
        "seconds_after_request": round(now - requested_at, 3),
        "possible_rubber_stamp": flagged,
    }
    approval = dict(state.approval, approvals=[*prior, entry])
    base = replace(state, approval=approval, updated_at=now)
    step = state.current_step
    reasons = [f"approved by {reviewer} ({len(prior) + 1}/{state.approvals_required})"]
    if flagged:
        reasons.append(
            f"possible rubber stamp: approved {now - requested_at:.1f} s after the request "
            f"(< {state.rubber_stamp_s:g} s)"
        )
    ev_ok = Event(
        "approved",
        f"reviewer:{reviewer}",
        AWAITING,
        AWAITING,
        state.step,
        step.split,
        dict(entry, reasons=reasons, gates=state.approval.get("gates", [])),
    )
    if len(prior) + 1 < state.approvals_required:
        return Transition(base, (ev_ok,))
    reviewers = [a["reviewer"] for a in approval["approvals"]]
    new = _moved(
        base,
        PROMOTED,
        now=now,
        event="promoted",
        champion=state.challenger,
        challenger=state.champion,
        rollback_target=state.champion,
        outcome={"result": PROMOTED, "at": now, "reviewers": reviewers},
    )
    ev_p = Event(
        "promoted",
        "controller",
        AWAITING,
        PROMOTED,
        state.step,
        0.0,
        {
            "reviewers": reviewers,
            "new_champion": state.challenger.to_json(),
            "rollback_target": state.champion.to_json(),
            "target": asdict(desired(new)),
            "reasons": [
                f"challenger {state.challenger.version} promoted; rollback target "
                f"{state.champion.version}"
            ],
        },
    )
    return Transition(new, (ev_ok, ev_p))


def reject(state: State, *, reviewer: str, reason: str, now: float) -> Transition:
    if state.stage not in ACTIVE:
        raise TransitionError(f"nothing to reject in stage {state.stage}")
    if not reason.strip():
        raise TransitionError("a reason is required")
    t = rollback(
        state,
        actor=f"reviewer:{reviewer}",
        reasons=[f"rejected: {reason}"],
        now=now,
        data={"source": "rejected"},
    )
    rb = t.events[0]
    ev = Event(
        "rejected",
        f"reviewer:{reviewer}",
        state.stage,
        ROLLED_BACK,
        state.step,
        0.0,
        {
            "reviewer": reviewer,
            "reason": reason,
            "reasons": [f"rejected: {reason}"],
            "target": rb.data["target"],
        },
    )
    return Transition(t.state, (ev, rb))
