"""Fast guardrail checks over the current step's captured records (pure).

The controller checks these every ``check_interval_s``, i.e. at many looks per step, so each
check uses *always-valid* bounds (confidence sequences): over any number of looks, the chance
that a challenger exactly at a limit is rolled back stays at or below ``alpha``. The data are
cumulative over the step (a confidence sequence covers one parameter as its sample grows); the
controller folds each tick's new records into a :class:`GuardrailState`.

Each side of a record (``champion``/``challenger``) that was called counts as one call of that
model: an error when ``error`` is set or ``status`` is missing or >= 500. With at least
``min_requests`` calls on each side:

* **error rate**: breach when the always-valid interval of challenger − champion error rate lies
  entirely above ``max_error_rate_delta`` (each rate's beta-binomial confidence sequence at
  alpha/2, differenced: exact at small counts, so one errored request cannot trip it);
* **latency**: breach when even the challenger's lowest plausible ``latency_quantile`` (its
  confidence sequence's lower bound) exceeds the champion's highest plausible one by the ratio
  ``max_latency_ratio`` and by at least ``min_latency_delta_ms`` (quantile confidence sequences
  at alpha/2 each, from 2% log histograms widened to their bins' edges).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from router.analysis.sketches import LogHistogram
from router.promotion.config import GuardrailConfig

TEST_ERRORS = (
    "always-valid: beta-binomial confidence sequence of each error rate at alpha/2, differenced"
)
TEST_LATENCY = (
    "always-valid: confidence sequence of each side's quantile (beta-binomial order-statistic "
    "boundary) at alpha/2"
)


@dataclass(slots=True)
class SideTally:
    """Calls, errors and a latency histogram (successful calls) of one model in the step."""

    calls: int = 0
    errors: int = 0
    latency: LogHistogram = field(default_factory=LogHistogram)

    @property
    def error_rate(self) -> float:
        return self.errors / self.calls if self.calls else 0.0

    def quantile(self, q: float) -> float | None:
        return self.latency.quantile(q)


@dataclass(slots=True)
class GuardrailState:
    """Cumulative tallies of one step's records, both sides (mergeable, fixed size)."""

    champion: SideTally = field(default_factory=SideTally)
    challenger: SideTally = field(default_factory=SideTally)
    records: int = 0

    def add(self, records: Iterable[dict[str, Any]]) -> None:
        lat: dict[str, list[float]] = {"champion": [], "challenger": []}
        for rec in records:
            self.records += 1
            for side in ("champion", "challenger"):
                s = rec.get(side)
                if not isinstance(s, dict):
                    continue
                t = self.champion if side == "champion" else self.challenger
                t.calls += 1
                status = s.get("status")
                if s.get("error") or status is None or int(status) >= 500:
                    t.errors += 1
                elif isinstance(s.get("latency_ms"), (int, float)):
                    lat[side].append(float(s["latency_ms"]))
        self.champion.latency.add_array(np.asarray(lat["champion"], dtype=float))
        self.challenger.latency.add_array(np.asarray(lat["challenger"], dtype=float))


@dataclass(frozen=True, slots=True)
class GuardrailCheck:
    name: str
    passed: bool
    value: float | None
    threshold: float
    reason: str
    state: str = "pass"
    ci: tuple[float | None, float | None] = (None, None)
    test: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "passed": self.passed,
            "value": self.value,
            "threshold": self.threshold,
            "reason": self.reason,
            "state": self.state,
            "ci": list(self.ci),
            "test": self.test,
            "always_valid": True,
        }


@dataclass(frozen=True, slots=True)
class GuardrailResult:
    champion: SideTally
    challenger: SideTally
    checks: list[GuardrailCheck] = field(default_factory=list)

    @property
    def breached(self) -> bool:
        return any(not c.passed for c in self.checks)

    @property
    def reasons(self) -> list[str]:
        return [c.reason for c in self.checks if not c.passed]


def _round(x: float | None, nd: int = 6) -> float | None:
    return None if x is None else round(float(x), nd)


def error_check(state: GuardrailState, cfg: GuardrailConfig) -> GuardrailCheck:
    from router.analysis.gates.rules import live_proportions_interval  # scipy: on first check only

    cp, ch = state.champion, state.challenger
    enough = min(cp.calls, ch.calls) >= cfg.min_requests
    delta = ch.error_rate - cp.error_rate
    lo_a, hi_a = live_proportions_interval(cp.errors, cp.calls, ch.errors, ch.calls, cfg.alpha)
    lo, hi = float(lo_a), float(hi_a)
    breach = enough and lo > cfg.max_error_rate_delta
    if not enough:
        st = "not_enough_data"
        why = f"not enough calls yet (n={ch.calls}/{cp.calls} < {cfg.min_requests})"
    else:
        st = "fail" if breach else "pass" if hi <= cfg.max_error_rate_delta else "inconclusive"
        why = (
            f"challenger error rate {ch.error_rate:.2%} vs champion {cp.error_rate:.2%}: delta "
            f"{delta:+.2%}, always-valid interval [{lo:+.2%}, {hi:+.2%}] "
            f"{'entirely above' if breach else 'not entirely above'} "
            f"{cfg.max_error_rate_delta:.2%} (n={ch.calls}/{cp.calls})"
        )
    return GuardrailCheck(
        "error_rate_delta",
        not breach,
        _round(delta),
        cfg.max_error_rate_delta,
        why,
        st,
        (_round(lo), _round(hi)),
        TEST_ERRORS,
    )


def latency_check(state: GuardrailState, cfg: GuardrailConfig) -> GuardrailCheck:
    from router.analysis.sequential import quantile_cs_ranks

    cp, ch = state.champion, state.challenger
    q = cfg.latency_quantile
    qname = f"p{q * 100:g}"
    enough = min(cp.calls, ch.calls) >= cfg.min_requests
    qc, qh = cp.quantile(q), ch.quantile(q)

    def bounds(t: SideTally) -> tuple[float | None, float | None]:
        n = t.latency.n
        if n == 0:
            return None, None
        r_lo, r_hi = quantile_cs_ranks(n, q, cfg.alpha / 2)
        return t.latency.bounds_at_ranks(int(r_lo), int(r_hi))

    ch_lo, _ = bounds(ch)
    _, cp_hi = bounds(cp)
    ratio = qh / max(qc, 1e-9) if qc is not None and qh is not None else None
    ratio_lo = ch_lo / max(cp_hi, 1e-9) if ch_lo is not None and cp_hi is not None else None
    breach = (
        enough
        and ratio_lo is not None
        and ch_lo is not None
        and cp_hi is not None
        and ratio_lo > cfg.max_latency_ratio
        and ch_lo - cp_hi >= cfg.min_latency_delta_ms
    )
    if not enough or qc is None or qh is None:
        st, why = "not_enough_data", "not enough successful calls to compare latency"
    elif ratio_lo is None:
        st = "not_enough_data"
        why = (
            f"challenger {qname} {qh:.1f} ms vs champion {qc:.1f} ms: too few latencies for an "
            f"always-valid bound on the champion's {qname}"
        )
    else:
        st = "fail" if breach else "pass"
        why = (
            f"challenger {qname} {qh:.1f} ms vs champion {qc:.1f} ms: ratio {ratio:.2f}, at least "
            f"{ratio_lo:.2f} (always valid) {'>' if breach else 'not >'} "
            f"{cfg.max_latency_ratio:g}"
        )
    return GuardrailCheck(
        "latency_regression",
        not breach,
        _round(ratio, 4),
        cfg.max_latency_ratio,
        why,
        st,
        (_round(ratio_lo, 4), None),
        TEST_LATENCY,
    )


def evaluate(state: GuardrailState, cfg: GuardrailConfig) -> GuardrailResult:
    """The guardrail checks of a step's cumulative tallies."""
    return GuardrailResult(
        state.champion, state.challenger, [error_check(state, cfg), latency_check(state, cfg)]
    )


def check_guardrails(records: Iterable[dict[str, Any]], cfg: GuardrailConfig) -> GuardrailResult:
    """The checks over a list of records (all of the step so far)."""
    state = GuardrailState()
    state.add(records)
    return evaluate(state, cfg)
