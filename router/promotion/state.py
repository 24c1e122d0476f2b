"""The promotion's plain data (pure, frozen, JSON round trip): the stages, a ramp's steps, the
pinned model versions, the routers' target, the controller :class:`State`, and the events and
:class:`Transition` the state machine (:mod:`router.promotion.machine`) returns.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SHADOW = "shadow"
CANARY = "canary"
AWAITING = "awaiting_approval"
PROMOTED = "promoted"
ROLLED_BACK = "rolled_back"
ACTIVE = (SHADOW, CANARY, AWAITING)
TERMINAL = (PROMOTED, ROLLED_BACK)


@dataclass(frozen=True, slots=True)
class Pin:
    url: str
    version: str

    def to_json(self) -> dict[str, str]:
        return {"url": self.url, "version": self.version}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Pin:
        return cls(url=str(d["url"]), version=str(d["version"]))


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    split: float
    mirror: float
    min_duration_s: float
    max_duration_s: float | None = None

    @property
    def stage(self) -> str:
        return SHADOW if self.split == 0.0 else CANARY


@dataclass(frozen=True, slots=True)
class Contender:
    """One challenger of a multi-challenger canary: its name on the routers, its pin, and why it
    was dropped (None while it competes)."""

    name: str
    pin: Pin
    dropped: dict[str, Any] | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Contender:
        return cls(name=str(d["name"]), pin=Pin.from_json(d["pin"]), dropped=d.get("dropped"))


@dataclass(frozen=True, slots=True)
class Share:
    """A challenger's split and mirror shares on the routers."""

    name: str
    split: float
    mirror: float


@dataclass(frozen=True, slots=True)
class Target:
    """What every router should be set to (``challengers``: each challenger's shares, in a
    multi-challenger canary; empty otherwise)."""

    split: float
    mirror: float
    champion: Pin
    challenger: Pin
    challengers: tuple[Share, ...] = ()


@dataclass(frozen=True, slots=True)
class Event:
    event: str  # started, step_changed, hold, resumed, rollback, approval_requested, approved,
    #             rejected, promoted
    actor: str
    stage_from: str | None
    stage_to: str | None
    step: int
    split: float | None
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class State:
    experiment: str
    stage: str
    step: int
    step_started_at: float
    steps: tuple[Step, ...]
    champion: Pin
    challenger: Pin
    routers: tuple[str, ...]
    rollback_mirror: float
    approvals_required: int
    rubber_stamp_s: float
    created_at: float
    updated_at: float
    policy: str | None = None
    held: dict[str, Any] | None = None
    approval: dict[str, Any] | None = None
    rollback_target: Pin | None = None
    outcome: dict[str, Any] | None = None
    last_analysis_at: float | None = None
    last_verdict: dict[str, Any] | None = None
    history: tuple[dict[str, Any], ...] = ()
    contenders: tuple[Contender, ...] = ()  # a multi-challenger canary (router.promotion.contest)

    @property
    def current_step(self) -> Step:
        return self.steps[min(self.step, len(self.steps) - 1)]

    @property
    def live_contenders(self) -> tuple[Contender, ...]:
        return tuple(c for c in self.contenders if c.dropped is None)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["steps"] = [asdict(s) for s in self.steps]
        d["routers"] = list(self.routers)
        d["history"] = list(self.history)
        d["contenders"] = [asdict(c) for c in self.contenders]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> State:
        rt = d.get("rollback_target")
        return cls(
            experiment=d["experiment"],
            stage=d["stage"],
            step=int(d["step"]),
            step_started_at=float(d["step_started_at"]),
            steps=tuple(Step(**s) for s in d["steps"]),
            champion=Pin.from_json(d["champion"]),
            challenger=Pin.from_json(d["challenger"]),
            routers=tuple(d["routers"]),
            rollback_mirror=float(d["rollback_mirror"]),
            approvals_required=int(d["approvals_required"]),
            rubber_stamp_s=float(d["rubber_stamp_s"]),
            created_at=float(d["created_at"]),
            updated_at=float(d["updated_at"]),
            policy=d.get("policy"),
            held=d.get("held"),
            approval=d.get("approval"),
            rollback_target=Pin.from_json(rt) if rt else None,
            outcome=d.get("outcome"),
            last_analysis_at=d.get("last_analysis_at"),
            last_verdict=d.get("last_verdict"),
            history=tuple(d.get("history", ())),
            contenders=tuple(Contender.from_json(c) for c in d.get("contenders") or ()),
        )


@dataclass(frozen=True, slots=True)
class Transition:
    state: State
    events: tuple[Event, ...] = ()
