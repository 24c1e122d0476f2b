"""A gate row (the fields every gate writes), the descriptions of the tests the gates use, and the
number formatting of their reasons (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from router.analysis.gates.rules import FAIL, NOT_APPLICABLE, PASS, STATES
from router.analysis.jsonsafe import f

CS_BOUNDED = (
    "confidence sequence for the mean of a bounded variable (gamma-exponential mixture, "
    "Howard et al. 2021); exact at any sample size"
)
CS_QUANTILE = (
    "confidence sequence for a quantile from order statistics (beta-binomial boundary, "
    "Howard & Ramdas 2022); distribution-free"
)
CS_PROPORTIONS = (
    "confidence sequences for each proportion (beta-binomial mixture, Robbins 1970), "
    "combined at alpha/2 each; exact at any sample size"
)
CS_NORMAL = "mSPRT normal-mixture confidence sequence (Johari et al. 2017); asymptotic"
NO_TEST = "threshold on the point estimate (descriptive; no test)"
NO_PAIRS = "no mirrored pairs in this window: compared in the mirrored (shadow) steps"


def row(
    name: str,
    kind: str,
    state: str,
    value: Any,
    threshold: Any,
    reason: str,
    *,
    null_hypothesis: str,
    test: str,
    always_valid: bool,
    ci: Sequence[float | None] | None = None,
    better: str | None = None,
    tested: bool = True,
    p_value: float | None = None,
) -> dict[str, Any]:
    """One gate's row (its fields are described in :mod:`router.analysis.gates`); a gate
    without a test (``tested=False``) is never ``significant``."""
    assert state in STATES, state
    return {
        "name": name,
        "kind": kind,
        "state": state,
        "passed": state in (PASS, NOT_APPLICABLE),
        "significant": tested and state == FAIL,
        "value": f(value),
        "threshold": f(threshold),
        "reason": reason,
        "null_hypothesis": null_hypothesis,
        "test": test,
        "always_valid": bool(always_valid),
        "ci": None if ci is None else [f(ci[0]), f(ci[1])],
        "better": better,
        "p_value": f(p_value),
    }


def fmt(x: Any, nd: int = 4) -> str:
    """A number for a reason's text (``n/a`` for None)."""
    return "n/a" if x is None else f"{x:.{nd}g}" if isinstance(x, float) else str(x)


def ci_text(lo: float | None, hi: float | None, nd: int = 4) -> str:
    """An interval for a reason's text."""
    return f"[{fmt(lo, nd)}, {fmt(hi, nd)}]"
