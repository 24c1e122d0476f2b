"""The ``window``, ``counts`` and ``srm`` sections: what was read, and whether units were split
between the arms as configured (sample ratio mismatch)."""

from __future__ import annotations

from typing import Any

from router.analysis import proportions
from router.analysis.accumulate import VARIANTS, Accumulator
from router.analysis.jsonsafe import f
from router.analysis.policy import Policy


def window_section(acc: Accumulator, earliest_available: float | None) -> dict[str, Any]:
    trimmed = (
        earliest_available is not None and acc.since is not None and earliest_available > acc.since
    )
    return {
        "since": f(acc.since),
        "until": f(acc.until),
        "first_record_ts": f(acc.first_ts),
        "last_record_ts": f(acc.last_ts),
        "duration_s": f(duration(acc)),
        "earliest_available": f(earliest_available),
        "trimmed": bool(trimmed),
    }


def duration(acc: Accumulator) -> float | None:
    if acc.first_ts is None or acc.last_ts is None:
        return None
    return acc.last_ts - acc.first_ts


def _unit_counts(acc: Accumulator) -> list[int]:
    return acc.units.counts()


def counts_section(acc: Accumulator, joined_by_unit: int, pre_exposure: int) -> dict[str, Any]:
    oi = acc.outcomes
    units = _unit_counts(acc)
    joined = acc.joined_by_request + joined_by_unit
    return {
        "records": acc.records,
        "per_variant": {VARIANTS[v]: acc.requests[v] for v in (0, 1)},
        "mirrored_pairs": acc.paired.pairs,
        "comparable_pairs": acc.paired.comparable,
        "units": {"champion": units[0], "challenger": units[1], "both_variants": units[2]},
        "duplicates_skipped": acc.duplicates,
        "conflicts": acc.conflicts,
        "invalid_records": acc.invalid,
        "outside_window": acc.outside_window,
        "outcomes": {
            "rows": oi.total,
            "valid": oi.valid,
            "invalid": oi.invalid,
            "duplicates": oi.duplicate_rows,
            "joined": joined,
            "unjoined": max(oi.valid - joined - pre_exposure, 0),
            "before_exposure": pre_exposure,
            "outside_window": oi.outside_window,
        },
    }


def srm_section(acc: Accumulator, policy: Policy, split: float | None) -> dict[str, Any]:
    units = _unit_counts(acc)
    base: dict[str, Any] = {
        "split": f(split),
        "alpha": policy.srm.alpha,
        "min_share_diff": policy.srm.min_share_diff,
        "observed": {"champion": units[0], "challenger": units[1]},
        "excluded_units_in_both_variants": units[2],
    }
    if split is None:
        return base | {
            "state": "not_applicable",
            "reason": "split fraction unknown (pass --split)",
            "statistic": None,
            "p_value": None,
            "sequential_p_value": None,
            "mismatch": False,
            "max_share_diff": None,
        }
    res = proportions.srm_test(units[:2], [1 - split, split], policy.srm.alpha,
                         policy.srm.min_share_diff, policy.sequential.tau)  # fmt: skip
    reason = {
        "ok": "units per variant match the configured split"
        if not res.mismatch
        else "units per variant deviate from the configured split",
        "not_enough_data": "no units in the window yet",
        "not_applicable": "single-arm split (0 or 1): nothing to compare",
    }[res.state]
    total = units[0] + units[1]
    return base | {
        "state": res.state,
        "reason": reason,
        "statistic": f(res.statistic),
        "p_value": f(res.pvalue),
        "sequential_p_value": f(res.sequential_pvalue),
        "mismatch": res.mismatch,
        "max_share_diff": f(res.max_share_diff),
        "expected": {"champion": f(total * (1 - split)), "challenger": f(total * split)},
        "method": res.method,
    }
