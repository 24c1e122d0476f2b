"""Fast guardrail checks over the current step's captured records (pure).

Each side of a record (``champion``/``challenger``) that was called counts as one call of that
model: an error when ``error`` is set or ``status`` is missing or >= 500. The challenger breaches
the error guardrail when its error rate exceeds the champion's by more than
``max_error_rate_delta`` *and* the one-sided two-proportion z statistic (pooled variance) is at
least ``min_z``, with at least ``min_requests`` calls on each side. Latency breaches when the
challenger's ``latency_quantile`` exceeds the champion's by the ratio ``max_latency_ratio`` and by
at least ``min_latency_delta_ms``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from router.promotion.config import GuardrailConfig


@dataclass(frozen=True, slots=True)
class SideStats:
    calls: int
    errors: int
    latency_q_ms: float | None

    @property
    def error_rate(self) -> float:
        return self.errors / self.calls if self.calls else 0.0


@dataclass(frozen=True, slots=True)
class GuardrailCheck:
    name: str
    passed: bool
    value: float | None
    threshold: float
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "passed": self.passed,
            "value": self.value,
            "threshold": self.threshold,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class GuardrailResult:
    champion: SideStats
    challenger: SideStats
    checks: list[GuardrailCheck] = field(default_factory=list)

    @property
    def breached(self) -> bool:
        return any(not c.passed for c in self.checks)

    @property
    def reasons(self) -> list[str]:
        return [c.reason for c in self.checks if not c.passed]


def quantile(values: list[float], q: float) -> float | None:
    """Linear-interpolation quantile (numpy's default "linear" method)."""
    if not values:
        return None
    xs = sorted(values)
    pos = q * (len(xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def side_stats(records: Iterable[dict[str, Any]], side: str, q: float) -> SideStats:
    calls = errors = 0
    latencies: list[float] = []
    for rec in records:
        s = rec.get(side)
        if not isinstance(s, dict):
            continue
        calls += 1
        status = s.get("status")
        if s.get("error") or status is None or int(status) >= 500:
            errors += 1
        elif s.get("latency_ms") is not None:
            latencies.append(float(s["latency_ms"]))
    return SideStats(calls, errors, quantile(latencies, q))


def two_proportion_z(x1: int, n1: int, x2: int, n2: int) -> float:
    """One-sided z for p2 > p1 with pooled variance; 0 when undefined."""
    if n1 == 0 or n2 == 0:
        return 0.0
    p = (x1 + x2) / (n1 + n2)
    var = p * (1 - p) * (1 / n1 + 1 / n2)
    if var <= 0.0:
        return 0.0
    return (x2 / n2 - x1 / n1) / math.sqrt(var)


def check_guardrails(records: Iterable[dict[str, Any]], cfg: GuardrailConfig) -> GuardrailResult:
    recs = list(records)
    champ = side_stats(recs, "champion", cfg.latency_quantile)
    chall = side_stats(recs, "challenger", cfg.latency_quantile)
    checks: list[GuardrailCheck] = []
    enough = min(champ.calls, chall.calls) >= cfg.min_requests
    delta = chall.error_rate - champ.error_rate
    z = two_proportion_z(champ.errors, champ.calls, chall.errors, chall.calls)
    err_breach = enough and delta > cfg.max_error_rate_delta and z >= cfg.min_z
    checks.append(
        GuardrailCheck(
            name="error_rate_delta",
            passed=not err_breach,
            value=round(delta, 6),
            threshold=cfg.max_error_rate_delta,
            reason=(
                f"challenger error rate {chall.error_rate:.2%} vs champion "
                f"{champ.error_rate:.2%}: delta {delta:+.2%} "
                f"{'>' if err_breach else 'within'} {cfg.max_error_rate_delta:.2%} "
                f"(z={z:.2f}, n={chall.calls}/{champ.calls})"
                if enough
                else f"not enough calls yet (n={chall.calls}/{champ.calls} < {cfg.min_requests})"
            ),
        )
    )
    lat_breach = False
    ratio: float | None = None
    if enough and champ.latency_q_ms is not None and chall.latency_q_ms is not None:
        ratio = chall.latency_q_ms / max(champ.latency_q_ms, 1e-9)
        lat_breach = (
            ratio > cfg.max_latency_ratio
            and chall.latency_q_ms - champ.latency_q_ms >= cfg.min_latency_delta_ms
        )
    qname = f"p{cfg.latency_quantile * 100:g}"
    checks.append(
        GuardrailCheck(
            name="latency_regression",
            passed=not lat_breach,
            value=None if ratio is None else round(ratio, 4),
            threshold=cfg.max_latency_ratio,
            reason=(
                f"challenger {qname} {chall.latency_q_ms:.1f} ms vs champion "
                f"{champ.latency_q_ms:.1f} ms: ratio {ratio:.2f} "
                f"{'>' if lat_breach else 'within'} {cfg.max_latency_ratio:g}"
                if ratio is not None
                and chall.latency_q_ms is not None
                and champ.latency_q_ms is not None
                else "not enough successful calls to compare latency"
            ),
        )
    )
    return GuardrailResult(champ, chall, checks)
