"""A canary with several challengers at once (pure: plain data in, plain data out).

When the routers run more than one challenger, the controller ramps them together
(:attr:`State.contenders`): each step's ``split`` is the canary's **total** share, divided
equally (rounded down to whole buckets) among the challengers still competing, every one of
them mirrored at the step's ``mirror``. Each analysis gives a decision per challenger (the
report's ``arms`` section: every challenger against the champion, Holm across challengers and
metrics, at most one ``promote``):

- a challenger whose decision is ``rollback`` (it failed a guardrail or the primary metric's
  harm test) is **dropped** at once: its split and mirror go to 0 on every router, the event
  ``challenger_dropped`` is audited and sent to webhooks; when none is left, the canary rolls
  back;
- the step advances when the report names a ``winner`` (its decision is ``promote``), with
  every remaining challenger; at the last step the winner alone goes to approval (the others are
  dropped as "lost to <winner>"), and approval promotes it as with one challenger;
- without a winner the step waits (``continue``), or holds when every remaining challenger
  says ``hold`` or the step reached its ``max_duration_s``.

The fast guardrails between analyses see every challenger's requests together against the
champion's: a breach there rolls the whole canary back (a per-challenger fast check is not built
yet; the analysis drops a single bad challenger).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from router.promotion.state import (
    AWAITING,
    CANARY,
    PROMOTED,
    SHADOW,
    Contender,
    Event,
    Pin,
    Share,
    State,
)

BUCKETS = 10_000


def contenders_of(challengers: list[tuple[str, Pin]]) -> tuple[Contender, ...]:
    return tuple(Contender(name, pin) for name, pin in challengers)


def shares(state: State) -> tuple[Share, ...]:
    """Each challenger's split and mirror on the routers for ``state``."""
    live = state.live_contenders
    step = state.current_step
    out = []
    for c in state.contenders:
        if c.dropped is not None or state.stage == PROMOTED:
            out.append(Share(c.name, 0.0, 0.0))
        elif state.stage in (SHADOW, CANARY, AWAITING):
            per = math.floor(step.split * BUCKETS / len(live)) / BUCKETS
            out.append(Share(c.name, per, step.mirror))
        else:  # rolled back: like one challenger, split 0 and the rollback mirror
            out.append(Share(c.name, 0.0, state.rollback_mirror))
    return tuple(out)


def _drop(state: State, names: dict[str, list[str]], now: float, by: str) -> State:
    contenders = tuple(
        replace(c, dropped={"at": now, "by": by, "reasons": names[c.name]})
        if c.name in names and c.dropped is None
        else c
        for c in state.contenders
    )
    return replace(state, contenders=contenders, updated_at=now)


def _dropped_events(state: State, names: dict[str, list[str]], actor: str) -> list[Event]:
    pins = {c.name: c.pin for c in state.contenders}
    return [
        Event(
            "challenger_dropped",
            actor,
            state.stage,
            state.stage,
            state.step,
            state.current_step.split,
            {"challenger": n, "pin": pins[n].to_json(), "reasons": reasons},
        )
        for n, reasons in names.items()
    ]


def decisions_of(state: State, verdict: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each competing challenger's decision in ``verdict`` (the report's ``arms`` section, or the
    top-level decision when one challenger is left)."""
    live = [c.name for c in state.live_contenders]
    arms = verdict.get("arms")
    if arms:
        return {n: d for n, d in arms.get("decisions", {}).items() if n in live}
    if len(live) == 1:
        return {live[0]: {"action": verdict.get("action"), "reasons": verdict.get("reasons", [])}}
    return {}


@dataclass(frozen=True, slots=True)
class Resolution:
    """What one analysis means for a contest, for :func:`router.promotion.machine.on_verdict`
    to apply: the state with losers dropped (and, at the last step, the winner as the
    challenger), their events, and either a rollback (every challenger dropped: its reasons and
    data) or the one combined verdict to apply as with a single challenger."""

    state: State
    events: tuple[Event, ...]
    verdict: dict[str, Any]
    rollback: list[str] | None = None
    data: dict[str, Any] | None = None


def resolve(state: State, verdict: dict[str, Any], *, now: float) -> Resolution:
    decisions = decisions_of(state, verdict)
    losers = {
        n: [f"{n}: {r}" for r in d.get("reasons", [])] or [f"{n}: analyzer decided rollback"]
        for n, d in decisions.items()
        if d.get("action") == "rollback"
    }
    events = _dropped_events(state, losers, "controller:analysis")
    base = _drop(state, losers, now, "analysis")
    live = [c.name for c in base.live_contenders]
    if not live:
        reasons = [r for rs in losers.values() for r in rs] or ["every challenger was dropped"]
        return Resolution(base, tuple(events), verdict, ["every challenger dropped", *reasons],
                          {"source": "analysis", "dropped": sorted(losers)})  # fmt: skip
    arms = verdict.get("arms") or {}
    winner = arms.get("winner") if arms else None
    if not arms and len(live) == 1 and decisions.get(live[0], {}).get("action") == "promote":
        winner = live[0]
    if winner not in live:
        winner = None
    rest = {n: d for n, d in decisions.items() if n in live}
    if winner is not None:
        action = "promote"
        reasons = [f"{winner} wins: ranks first and passes every gate",
                   *(rest.get(winner) or {}).get("reasons", [])]  # fmt: skip
        last = base.step + 1 >= len(base.steps)
        if last and not base.held:  # the winner alone goes to approval
            others = {n: [f"lost to {winner}"] for n in live if n != winner}
            events += _dropped_events(base, others, "controller:analysis")
            base = _drop(base, others, now, "analysis")
            pin = next(c.pin for c in base.contenders if c.name == winner)
            base = replace(base, challenger=pin)
    elif rest and all(d.get("action") == "hold" for d in rest.values()):
        action = "hold"
        reasons = [f"{n}: {r}" for n, d in rest.items() for r in d.get("reasons", [])]
    else:
        action = "continue"
        reasons = [f"{n}: {r}" for n, d in rest.items() for r in d.get("reasons", [])]
    return Resolution(base, tuple(events), dict(verdict, action=action, reasons=reasons))


# ---- the fast guardrails, per challenger ------------------------------------------------------


def arm_sides(rec: dict[str, Any], arm: str) -> dict[str, Any] | None:
    """Record ``rec`` as challenger ``arm``'s view sees it (its champion side and ``arm``'s
    answer as the challenger side), or None when another challenger served it (the record
    projection of :mod:`router.analysis.arms`, for the fast guardrails)."""
    if rec.get("forced"):
        return None
    served = rec.get("variant") or rec.get("served")
    if served not in ("champion", arm):
        return None
    side = rec.get("challenger")
    own = rec.get("arm") or ("challenger" if side is not None else None)
    if own != arm:
        side = (rec.get("shadows") or {}).get(arm)
    return {"champion": rec.get("champion"), "challenger": side}


class ArmTallies:
    """One :class:`~router.promotion.guardrails.GuardrailState` per challenger of a contest,
    each over that challenger's view of the step's records."""

    def __init__(self, names: list[str]) -> None:
        from router.promotion.guardrails import GuardrailState

        self.states = {n: GuardrailState() for n in names}

    def add(self, records: list[dict[str, Any]]) -> None:
        for name, st in self.states.items():
            st.add(v for r in records if (v := arm_sides(r, name)) is not None)


def drop_for_guardrail(
    state: State, name: str, result: dict[str, Any], *, now: float
) -> tuple[State, tuple[Event, ...]]:
    """Challenger ``name`` breached a fast guardrail: drop it (the caller rolls the canary
    back when none is left)."""
    reasons = [f"{name}: guardrail: {r}" for r in result.get("reasons", [])]
    names = {name: reasons or [f"{name}: guardrail breached"]}
    events = _dropped_events(state, names, "controller:guardrail")
    return _drop(state, names, now, "guardrail"), tuple(events)
