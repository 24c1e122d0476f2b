"""A compact promotion view for the router's admin API (``GET <prefix>/state``).

Meant to be called by :mod:`router.sidecar.admin` with the capture writer's async Redis client::

    from router.promotion.view import promotion_view
    view["promotion"] = await promotion_view(redis, app.cfg.experiment.name)
"""

from __future__ import annotations

from typing import Any

import orjson

from router.capture.controlplane import is_cluster_client
from router.promotion.machine import desired
from router.promotion.state import State
from router.promotion.store import state_key


def summarize(state: State) -> dict[str, Any]:
    """Stage, step, target, hold, approval progress and history of a controller state."""
    step = state.current_step
    target = desired(state)
    approval = state.approval
    return {
        "stage": state.stage,
        "step": state.step,
        "step_name": step.name,
        "steps": len(state.steps),
        "step_started_at": state.step_started_at,
        "target": {"split": target.split, "mirror": target.mirror},
        "champion": state.champion.to_json(),
        "challenger": state.challenger.to_json(),
        "rollback_target": state.rollback_target.to_json() if state.rollback_target else None,
        "held": state.held,
        "approval": None
        if approval is None
        else {
            "requested_at": approval["requested_at"],
            "required": approval["required"],
            "approved_by": [a["reviewer"] for a in approval["approvals"]],
        },
        "last_verdict": state.last_verdict,
        "outcome": state.outcome,
        "history": list(state.history),
    }


async def promotion_view(redis: Any, experiment: str) -> dict[str, Any] | None:
    """``None`` when no controller ever ran for ``experiment``."""
    raw = await redis.get(state_key(experiment, is_cluster_client(redis)))
    if not raw:
        return None
    return summarize(State.from_json(orjson.loads(raw)))
