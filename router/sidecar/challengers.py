"""Live changes to the set of challengers (pure: live state in, live state out).

The admin API (``POST <prefix>/challengers``) adds, removes and re-weights challengers while the
router runs. Every change is validated exactly like the config file (each challenger by
:class:`router.config.ChallengerConfig`, the set by :func:`router.config.check_challengers`:
unique names, split shares summing to at most 1) and errors name the field
(``challenger.split: ...``, ``challengers[1].name: ...``). Bucket extents follow
:mod:`router.sidecar.assign`: a new or raised challenger takes only champion buckets, a lowered
or removed one gives only its own back, so no other challenger's units move.

Expiry (``experiment.expires_at`` / ``max_duration_s``) is also decided here:
:func:`expiry_deadline`.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from pydantic import ValidationError

from router.config import (
    ChallengerConfig,
    ConfigError,
    ExperimentConfig,
    check_challengers,
    format_validation_error,
)
from router.sidecar.assign import resize
from router.sidecar.control import ChallengerLive, LiveState

# a challenger's upstream settings carried in the live state (plain data every worker applies);
# literal ``headers`` values (API keys) never go there: a challenger from the config file gets
# them from the file, one added live may use headers_from_env (names of variables only)
LIVE_EXCLUDE = frozenset({"url", "version", "name", "split", "mirror", "headers"})
OPS = ("add", "remove", "update")


class ChangeError(ValueError):
    """An invalid live change; ``str(err)`` names the field."""


def _config_of(c: ChallengerLive) -> dict[str, Any]:
    return {"name": c.name, "url": c.url, "version": c.version, "split": c.split,
            "mirror": c.mirror, **c.upstream}  # fmt: skip


def _validated(data: Any, where: str) -> ChallengerConfig:
    if not isinstance(data, dict):
        raise ChangeError(f"{where}: must be an object")
    try:
        return ChallengerConfig.model_validate(data)
    except ValidationError as err:
        # "challenger: split: problem" -> "challenger.split: problem"
        raise ChangeError(format_validation_error(where, err).replace(": ", ".", 1)) from None


def _live(c: ChallengerConfig, extents: tuple[tuple[int, int], ...]) -> ChallengerLive:
    try:
        c.upstream_headers()  # every variable of headers_from_env is set (here and so on
    except ConfigError as exc:  # every worker, which share this environment)
        raise ChangeError(f"challenger.{exc}") from None
    return ChallengerLive(
        name=c.name, url=c.url, version=c.version, split=c.split, mirror=c.mirror,
        extents=extents, upstream=c.model_dump(mode="json", exclude=set(LIVE_EXCLUDE)),
    )  # fmt: skip


def _check_set(configs: list[ChallengerConfig]) -> None:
    try:
        check_challengers(configs)
    except ValueError as exc:
        raise ChangeError(str(exc)) from None


def apply_change(state: LiveState, body: dict[str, Any]) -> tuple[ChallengerLive, ...]:
    """The challengers after the change ``body`` describes:

    - ``{"op": "add", "challenger": {name, url, version, split, mirror, ...}}``
    - ``{"op": "remove", "name": NAME}``
    - ``{"op": "update", "name": NAME, "split"?, "mirror"?, "url"?, "version"?, ...}``
      (any key of a challenger but its name)
    """
    op = body.get("op")
    if op not in OPS:
        raise ChangeError(f"op: must be one of {', '.join(OPS)} (got {op!r})")
    current = list(state.challengers)
    names = [c.name for c in current]
    layout = state.layout()
    if op == "add":
        unknown = set(body) - {"op", "challenger", "note"}
        if unknown:
            raise ChangeError(f"{sorted(unknown)[0]}: unknown key")
        new = _validated(body.get("challenger"), "challenger")
        configs = [_validated(_config_of(c), f"challengers[{i}]") for i, c in enumerate(current)]
        _check_set([*configs, new])
        try:
            layout = resize(layout, new.name, new.split)
        except ValueError as exc:
            raise ChangeError(f"challenger.split: {exc}") from None
        return (*current, _live(new, layout[new.name]))
    name = body.get("name")
    if name not in names:
        raise ChangeError(f"name: no challenger named {name!r} (challengers: {', '.join(names)})")
    i = names.index(name)
    if op == "remove":
        unknown = set(body) - {"op", "name", "note"}
        if unknown:
            raise ChangeError(f"{sorted(unknown)[0]}: unknown key")
        if len(current) == 1:
            raise ChangeError("name: the last challenger cannot be removed (set its split and "
                              "mirror to 0 instead)")  # fmt: skip
        return tuple(c for c in current if c.name != name)
    changes = {k: v for k, v in body.items() if k not in ("op", "name", "note")}
    if not changes:
        raise ChangeError("nothing to change (give split, mirror, url, version, ...)")
    updated = _validated({**_config_of(current[i]), **changes}, "challenger")
    configs = [_validated(_config_of(c), f"challengers[{j}]") for j, c in enumerate(current)]
    configs[i] = updated
    _check_set(configs)
    try:
        layout = resize(layout, name, updated.split)
    except ValueError as exc:
        raise ChangeError(f"challenger.split: {exc}") from None
    current[i] = _live(updated, layout[name])
    return tuple(current)


def expiry_deadline(exp: ExperimentConfig, started_at: float) -> float | None:
    """When the experiment ends (unix s): the earlier of ``expires_at`` and the live state's
    start plus ``max_duration_s``; None when neither is set."""
    ends = [t for t in (exp.expires_at,
                        started_at + exp.max_duration_s if exp.max_duration_s else None)
            if t is not None]  # fmt: skip
    return min(ends) if ends else None


def expired_state(state: LiveState, now: float | None = None) -> LiveState:
    """``state`` once expired: every unit to the champion, nothing mirrored (the challengers and
    their extents are kept, so the record of what ran stays readable)."""
    return replace(state, expired=True, updated_at=time.time() if now is None else now)
