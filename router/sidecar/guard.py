"""Shadow guard (pure; the caller passes the clock).

Mirroring costs the champion's host CPU and network. When the champion's recent p99 latency or
error rate rises above a configured limit, the guard *trips* and the router multiplies the mirror
fraction by ``throttled_mirror`` (0 by default: mirroring stops). It restores mirroring once the
champion has stayed healthy for ``recover_after_s``.

Observations land in one-second slots of a ring covering ``window_s``; each slot keeps a count, an
error count and a fixed-bucket latency histogram, so p99 over the window is exact to the bucket
edge and memory is constant. ``evaluate`` is called about once a second.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from dataclasses import dataclass

from router.config import GuardConfig

# latency bucket upper edges in milliseconds (log-spaced, ~12% resolution)
_EDGES_MS: tuple[float, ...] = tuple(round(0.1 * 1.12**i, 4) for i in range(110))


@dataclass(frozen=True, slots=True)
class GuardState:
    throttled: bool
    reason: str
    requests: int
    error_rate: float | None
    p99_ms: float | None


class _Slot:
    __slots__ = ("count", "errors", "hist", "second")

    def __init__(self) -> None:
        self.second = -1
        self.count = 0
        self.errors = 0
        self.hist = [0] * (len(_EDGES_MS) + 1)

    def reset(self, second: int) -> None:
        self.second = second
        self.count = 0
        self.errors = 0
        self.hist = [0] * (len(_EDGES_MS) + 1)


class ShadowGuard:
    def __init__(self, cfg: GuardConfig) -> None:
        self.cfg = cfg
        self.size = max(1, math.ceil(cfg.window_s))
        self.slots = [_Slot() for _ in range(self.size)]
        self.throttled = False
        self.healthy_since: float | None = None
        self.last = GuardState(False, "no data yet", 0, None, None)

    def observe(self, now: float, latency_s: float, error: bool) -> None:
        second = int(now)
        slot = self.slots[second % self.size]
        if slot.second != second:
            slot.reset(second)
        slot.count += 1
        if error:
            slot.errors += 1
        slot.hist[bisect_left(_EDGES_MS, latency_s * 1000.0)] += 1

    def window(self, now: float) -> tuple[int, int, float | None]:
        """(requests, errors, p99_ms) over the last ``window_s`` seconds."""
        lo = int(now) - self.size + 1
        count = errors = 0
        hist = [0] * (len(_EDGES_MS) + 1)
        for s in self.slots:
            if s.second >= lo:
                count += s.count
                errors += s.errors
                for i, c in enumerate(s.hist):
                    if c:
                        hist[i] += c
        if count == 0:
            return 0, 0, None
        rank = math.ceil(0.99 * count)
        running = 0
        p99 = None
        for i, c in enumerate(hist):
            running += c
            if running >= rank:
                p99 = _EDGES_MS[i] if i < len(_EDGES_MS) else math.inf
                break
        return count, errors, p99

    def evaluate(self, now: float) -> GuardState | None:
        """Recompute the state; return it when ``throttled`` changed, else None."""
        if not self.cfg.enabled:
            return None
        n, errors, p99 = self.window(now)
        err_rate = errors / n if n else None
        problems: list[str] = []
        if n >= self.cfg.min_requests:
            if self.cfg.max_p99_ms is not None and p99 is not None and p99 > self.cfg.max_p99_ms:
                problems.append(f"champion p99 {p99:.1f} ms > {self.cfg.max_p99_ms:g} ms")
            if (
                self.cfg.max_error_rate is not None
                and err_rate is not None
                and err_rate > self.cfg.max_error_rate
            ):
                problems.append(f"champion error rate {err_rate:.3f} > {self.cfg.max_error_rate:g}")
        changed = False
        if problems:
            self.healthy_since = None
            if not self.throttled:
                self.throttled = changed = True
            reason = "; ".join(problems)
        else:
            if self.healthy_since is None:
                self.healthy_since = now
            if self.throttled and now - self.healthy_since >= self.cfg.recover_after_s:
                self.throttled = False
                changed = True
            reason = (
                f"champion healthy for {now - self.healthy_since:.1f}s"
                if self.throttled
                else "champion healthy"
            )
        self.last = GuardState(self.throttled, reason, n, err_rate, p99)
        return self.last if changed else None

    def mirror_factor(self) -> float:
        return self.cfg.throttled_mirror if self.throttled else 1.0
