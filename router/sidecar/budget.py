"""Shadow budgets: at most ``mirror_max_rps`` mirrored requests per second to one shadow target.

A budget belongs to one worker (the fleet-wide ceiling is ``workers x replicas x
mirror_max_rps``; divide the challenger fleet's capacity by that product when you set it). It
works in two layers so that what it drops is chosen by **unit hash, not by load**:

1. Once a second :meth:`ShadowBudget.tick` measures the *demand*: requests per second whose
   unit falls in the target's mirror share. When the demand exceeds the budget it scales the
   target's mirror threshold by ``factor = budget / demand`` (smoothed, never above 1). The
   mirror decision stays ``mirror_bucket < threshold x factor``: the units that keep being
   mirrored are a hash-chosen, sticky subset of the mirror share, the same kind of random
   sample of units as the mirror share itself, so paired comparisons over them are unbiased
   for the whole population (a load-based drop would under-sample busy hours and heavy units).
   Units cut this way are counted as ``router_shadow_dropped{reason="budget"}``.
2. A token bucket (capacity one second of budget) catches the bursts between two ticks. Those
   drops do depend on load, so they are counted apart (``reason="budget_burst"``) and the
   report's coverage shows both; with steady traffic the first layer keeps them near zero.
"""

from __future__ import annotations

SMOOTHING = 0.5  # weight of the newest second in the demand estimate
HEADROOM = 0.9  # aim the hash layer at 90% of the budget so the token bucket rarely cuts


class ShadowBudget:
    __slots__ = ("demand", "eligible", "factor", "last_take", "last_tick", "max_rps", "tokens")

    def __init__(self, max_rps: float, now: float) -> None:
        self.max_rps = max_rps
        self.tokens = max_rps
        self.last_take = now
        self.last_tick = now
        self.eligible = 0  # requests in the mirror share since the last tick
        self.demand: float | None = None  # smoothed requests per second in the mirror share
        self.factor = 1.0

    def take(self, now: float) -> bool:
        """One mirrored request may go now (token bucket, refilled at ``max_rps``)."""
        self.tokens = min(self.max_rps, self.tokens + (now - self.last_take) * self.max_rps)
        self.last_take = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def tick(self, now: float) -> bool:
        """Update the hash-layer factor from the demand since the last tick; True if changed."""
        elapsed = now - self.last_tick
        if elapsed <= 0:
            return False
        rate = self.eligible / elapsed
        self.eligible = 0
        self.last_tick = now
        self.demand = (
            rate if self.demand is None else (SMOOTHING * rate + (1 - SMOOTHING) * self.demand)
        )
        target = HEADROOM * self.max_rps
        factor = 1.0 if self.demand <= target else target / self.demand
        changed = abs(factor - self.factor) > 1e-3
        self.factor = factor
        return changed
