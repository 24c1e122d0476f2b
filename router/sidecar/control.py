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
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

from router.sidecar.assign import threshold

POLL_INTERVAL = 0.2


@dataclass(frozen=True, slots=True)
class UpstreamPin:
    url: str
    version: str


@dataclass(frozen=True, slots=True)
class LiveState:
    version: int
    split: float
    mirror: float
    champion: UpstreamPin
    challenger: UpstreamPin
    updated_at: float = field(default_factory=time.time)
    updated_by: str = "config"
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LiveState:
        return cls(
            version=int(d["version"]),
            split=float(d["split"]),
            mirror=float(d["mirror"]),
            champion=UpstreamPin(**d["champion"]),
            challenger=UpstreamPin(**d["challenger"]),
            updated_at=float(d.get("updated_at", 0.0)),
            updated_by=str(d.get("updated_by", "")),
            note=str(d.get("note", "")),
        )


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

    def update(self, by: str, note: str = "", **changes: Any) -> LiveState:
        """Apply ``changes`` (split, mirror, champion, challenger) atomically; return new state."""
        with self._locked():
            current = self.read()
            if current is None:
                raise RuntimeError(f"control state missing at {self.path}")
            new = replace(
                current,
                version=current.version + 1,
                updated_at=time.time(),
                updated_by=by,
                note=note,
                **changes,
            )
            self._write(new)
            return new
