"""Live experiment state: the plain data, and the file shared by the workers of one router.

With capture on a Redis, the fleet shares one versioned live state in that Redis and every
worker follows it (:mod:`router.sidecar.fleet`); this file is then unused. Without one (capture
disabled, or ``control.shared: false``) the state (split, mirror, upstream pins) lives in
``<run_dir>/control.json``. A worker that receives an admin change writes the new state
atomically (write + rename, under an ``flock`` so two concurrent changes cannot lose one) with
an incremented ``version``. Every worker polls the
file's (mtime, size) every ``POLL_INTERVAL`` seconds and applies a newer version, so a change
reaches all workers well within one second. It starts from the config file at each ``serve``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

from router.sidecar.assign import resize, threshold

POLL_INTERVAL = 0.2


@dataclass(frozen=True, slots=True)
class UpstreamPin:
    url: str
    version: str


@dataclass(frozen=True, slots=True)
class ChallengerLive:
    """One challenger's live data: its upstream, its shares, and the bucket extents it owns
    (``[lo, hi)`` ranges, see :mod:`router.sidecar.assign`). ``upstream`` holds the rest of its
    validated config (timeouts, pool size, shadow budget) so every worker builds the same pools."""

    name: str
    url: str
    version: str
    split: float
    mirror: float
    extents: tuple[tuple[int, int], ...]
    upstream: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["extents"] = [list(e) for e in self.extents]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ChallengerLive:
        return cls(
            name=str(d["name"]),
            url=str(d["url"]),
            version=str(d["version"]),
            split=float(d["split"]),
            mirror=float(d["mirror"]),
            extents=tuple((int(lo), int(hi)) for lo, hi in d["extents"]),
            upstream=dict(d.get("upstream") or {}),
        )


@dataclass(frozen=True, slots=True)
class LiveState:
    """``split``, ``mirror`` and ``challenger`` are the first challenger's (what single-challenger
    clients read and write); ``challengers`` holds every challenger (A/B/n)."""

    version: int
    split: float
    mirror: float
    champion: UpstreamPin
    challenger: UpstreamPin
    updated_at: float = field(default_factory=time.time)
    updated_by: str = "config"
    note: str = ""
    challengers: tuple[ChallengerLive, ...] = ()
    expired: bool = False  # the experiment expired: every unit to the champion, no mirroring
    started_at: float = 0.0  # when this live state was first created (max_duration_s counts)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["challengers"] = [c.to_json() for c in self.challengers]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LiveState:
        """The state of a document; written by a single-challenger client (the promotion
        controller's target, an admin change of ``split``), the first challenger follows the
        single-challenger fields, and a ``shares`` key (``{name: [split, mirror]}``, the
        controller's multi-challenger target) re-weights those challengers, lowered shares
        first: each a deterministic function of the document, so every replica derives the
        same bucket layout (:func:`router.sidecar.assign.resize`)."""
        state = cls._read(d)
        try:
            state = with_first_challenger(state)
            shares = d.get("shares")
            if isinstance(shares, dict) and state.challengers:
                state = with_shares(state, shares)
        except ValueError:  # shares that do not fit: the layout as it was (counted by callers)
            pass
        return state

    @classmethod
    def _read(cls, d: dict[str, Any]) -> LiveState:
        return cls(
            version=int(d["version"]),
            split=float(d["split"]),
            mirror=float(d["mirror"]),
            champion=UpstreamPin(**d["champion"]),
            challenger=UpstreamPin(**d["challenger"]),
            updated_at=float(d.get("updated_at", 0.0)),
            updated_by=str(d.get("updated_by", "")),
            note=str(d.get("note", "")),
            challengers=tuple(ChallengerLive.from_json(c) for c in d.get("challengers") or ()),
            expired=bool(d.get("expired", False)),
            started_at=float(d.get("started_at", 0.0)),
        )

    def layout(self) -> dict[str, tuple[tuple[int, int], ...]]:
        return {c.name: c.extents for c in self.challengers}


def with_first_challenger(state: LiveState) -> LiveState:
    """Keep the two views consistent after a change of the single-challenger fields (split,
    mirror, challenger): the first challenger takes them, its extents resized so that only
    champion buckets move (see :func:`router.sidecar.assign.resize`)."""
    if not state.challengers:
        return state
    first = state.challengers[0]
    if (first.split, first.mirror, first.url, first.version) == (
        state.split, state.mirror, state.challenger.url, state.challenger.version
    ):
        return state
    layout = resize(state.layout(), first.name, state.split)
    new_first = replace(
        first, split=state.split, mirror=state.mirror, url=state.challenger.url,
        version=state.challenger.version, extents=layout[first.name],
    )  # fmt: skip
    return replace(state, challengers=(new_first, *state.challengers[1:]))


def with_shares(state: LiveState, shares: dict[str, Any]) -> LiveState:
    """``state`` with the named challengers' split and mirror set (lowered splits first)."""
    by = {c.name: c for c in state.challengers}
    want = {n: (float(v[0]), float(v[1])) for n, v in shares.items() if n in by}
    layout = state.layout()
    order = sorted(want, key=lambda n: want[n][0] - by[n].split)  # decreases first
    for n in order:
        layout = resize(layout, n, want[n][0])
    out = tuple(
        replace(c, split=want[c.name][0], mirror=want[c.name][1], extents=layout[c.name])
        if c.name in want else c
        for c in state.challengers
    )
    return with_challengers(state, out)


def with_challengers(state: LiveState, challengers: tuple[ChallengerLive, ...]) -> LiveState:
    """``state`` with a new list of challengers, the single-challenger fields following the
    first."""
    first = challengers[0]
    return replace(
        state, challengers=challengers, split=first.split, mirror=first.mirror,
        challenger=UpstreamPin(first.url, first.version),
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Live:
    """What the hot path reads of the live state, as one object: applying a new state (or a
    shadow-guard change) builds a new one and swaps ``RouterApp.live`` in one assignment, so a
    request reads one consistent view."""

    state: LiveState
    split_threshold: int
    mirror_threshold_raw: int
    mirror_threshold: int  # after the shadow guard's factor

    @classmethod
    def of(cls, state: LiveState, mirror_factor: float = 1.0) -> Live:
        raw = threshold(state.mirror)
        return cls(state, threshold(state.split), raw, int(raw * mirror_factor))


class ControlFile:
    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "control.json"
        self._lock_path = self.dir / "control.lock"
        self._stamp: tuple[int, int] | None = None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self._lock_path, "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _write(self, state: LiveState) -> None:
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(orjson.dumps(state.to_json()))
        os.replace(tmp, self.path)

    def initialise(self, state: LiveState) -> None:
        with self._locked():
            self._write(state)

    def read(self) -> LiveState | None:
        try:
            return LiveState.from_json(orjson.loads(self.path.read_bytes()))
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None

    def changed(self) -> bool:
        """True when the file changed since the last call (cheap: one stat)."""
        try:
            st = os.stat(self.path)
        except OSError:
            return False
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        return True

    def modify(
        self, by: str, note: str, change: Callable[[LiveState], dict[str, Any] | None]
    ) -> LiveState | None:
        """Read, change and write atomically: ``change(current)`` returns the changes to apply
        (as :meth:`update` takes them), or None to leave the state alone (then None is
        returned). Its exceptions propagate, nothing written."""
        with self._locked():
            current = self.read()
            if current is None:
                raise RuntimeError(f"control state missing at {self.path}")
            changes = change(current)
            if changes is None:
                return None
            return self._apply(current, by, note, changes)

    def update(self, by: str, note: str = "", **changes: Any) -> LiveState:
        """Apply ``changes`` (split, mirror, champion, challenger, challengers, expired) atomically;
        return the new state."""
        with self._locked():
            current = self.read()
            if current is None:
                raise RuntimeError(f"control state missing at {self.path}")
            return self._apply(current, by, note, changes)

    def _apply(self, current: LiveState, by: str, note: str, changes: dict[str, Any]) -> LiveState:
        many = changes.pop("challengers", None)
        new = replace(
            current,
            version=current.version + 1,
            updated_at=time.time(),
            updated_by=by,
            note=note,
            **changes,
        )
        new = with_first_challenger(new) if many is None else with_challengers(new, many)
        self._write(new)
        return new
