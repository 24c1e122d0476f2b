"""Gates on the evidence itself: enough samples before any decision, and units split between the
arms as configured (the sample ratio)."""

from __future__ import annotations

from typing import Any

from router.analysis.gates.rows import fmt, row
from router.analysis.gates.rules import FAIL, NOT_APPLICABLE, NOT_ENOUGH_DATA, PASS
from router.analysis.policy import Policy


def live(report: dict[str, Any]) -> bool:
    u = report["counts"]["units"]
    return bool(u["challenger"] > 0 and u["champion"] > 0)


def min_samples(report: dict[str, Any], policy: Policy, live: bool) -> dict[str, Any]:
    counts = report["counts"]
    if live:
        n = min(counts["units"]["champion"], counts["units"]["challenger"])
        what = "units in the smaller arm of the live split"
    else:
        n = counts["comparable_pairs"]
        what = "comparable mirrored pairs"
    state = PASS if n >= policy.min_samples else NOT_ENOUGH_DATA
    return row(
        "min_samples",
        "sample",
        state,
        n,
        policy.min_samples,
        f"{n} {what} (need {policy.min_samples})",
        null_hypothesis="none: a floor on the sample size before any decision",
        test="count",
        always_valid=True,
        tested=False,
    )


def srm(report: dict[str, Any], policy: Policy) -> dict[str, Any]:
    srm = report["srm"]
    st = srm["state"]
    state = {
        "ok": FAIL if srm["mismatch"] else PASS,
        "not_enough_data": NOT_ENOUGH_DATA,
        "not_applicable": NOT_APPLICABLE,
    }[st]
    obs = srm["observed"]
    reason = (
        f"{srm['reason']}: units champion {obs['champion']}, challenger {obs['challenger']} for "
        f"a split of {fmt(srm['split'])} (always-valid p={fmt(srm.get('sequential_p_value'))},"
        f" chi-square p={fmt(srm['p_value'])}, max share deviation "
        f"{fmt(srm['max_share_diff'])})"
    )
    return row(
        "srm",
        "srm",
        state,
        srm.get("sequential_p_value"),
        policy.srm.alpha,
        reason,
        null_hypothesis="units are split between the arms as configured",
        test="Dirichlet-multinomial mixture sequential test (always valid) and a share "
        "deviation above srm.min_share_diff",
        always_valid=True,
        p_value=srm.get("sequential_p_value"),
    )


def srm_segments(report: dict[str, Any], policy: Policy) -> dict[str, Any]:
    """A sample-ratio mismatch confined to some segment values (``srm.by_segment``)."""
    bs = report["srm"].get("by_segment") or {}
    st = bs.get("state", "not_applicable")
    state = {"ok": FAIL if bs.get("mismatched") else PASS, "not_enough_data": NOT_ENOUGH_DATA,
             "not_applicable": NOT_APPLICABLE}[st]  # fmt: skip
    worst = (bs.get("rows") or [{}])[0]
    reason = bs.get("reason", "not tested")
    if worst.get("observed"):
        p = fmt(worst["sequential_p_holm"])
        reason += (
            f" (lowest: {worst['field']}={worst['value']}, units {worst['observed'][0]} / "
            f"{worst['observed'][1]}, Holm-adjusted always-valid p={p})"
        )
    return row(
        "srm_segments",
        "srm",
        state,
        worst.get("sequential_p_holm"),
        policy.srm.alpha,
        reason,
        null_hypothesis="units are split as configured within every segment value",
        test="the srm gate's test per segment value, Holm-adjusted over the values tested",
        always_valid=True,
        p_value=worst.get("sequential_p_holm"),
    )
