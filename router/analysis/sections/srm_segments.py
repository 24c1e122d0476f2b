"""The sample-ratio test per segment value (``srm.by_segment``): a mismatch confined to one
platform or region (a client that drops the challenger's cookie, a CDN that caches one arm)
hides in the overall counts; tested value by value it is found and named.

Units are counted by their segment at first exposure (units served by both variants are left
out, as in the overall test). Every segment value with at least ``srm.min_segment_units`` units
is tested like the whole (:func:`router.analysis.proportions.srm_test`: chi-square or exact
binomial, and the always-valid Dirichlet-multinomial mixture); the always-valid p-values are
Holm-adjusted over all the values tested (family-wise error at most ``srm.alpha`` over every
field and value, under any dependence), and a value mismatches when its adjusted p is below
``srm.alpha`` *and* its share deviates by more than ``srm.min_share_diff``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from router.analysis import proportions, stats
from router.analysis.accumulate import Accumulator
from router.analysis.jsonsafe import f
from router.analysis.policy import Policy
from router.analysis.sections.unit_view import UnitView


def srm_by_segment(
    acc: Accumulator, policy: Policy, split: float | None, uv: UnitView
) -> dict[str, Any]:
    sp = policy.srm
    out: dict[str, Any] = {"min_units": sp.min_segment_units, "tested": 0, "rows": [],
                           "mismatched": []}  # fmt: skip
    if split is None or not 0 < split < 1:
        return out | {"state": "not_applicable", "reason": "no two-arm split to compare"}
    single = uv.single
    if not single.height or not acc.segments.combo_keys:
        return out | {"state": "not_applicable", "reason": "no segment fields recorded"}
    combo = single["combo"].to_numpy()
    arm = single["challenger"].to_numpy().astype(np.int64)
    counts = np.bincount(combo * 2 + arm, minlength=2 * len(acc.segments.combo_keys))
    per_item: dict[tuple[str, str], list[int]] = {}
    for c, key in enumerate(acc.segments.combo_keys):
        n0, n1 = int(counts[2 * c]), int(counts[2 * c + 1])
        if n0 or n1:
            for item in key:
                tally = per_item.setdefault(item, [0, 0])
                tally[0] += n0
                tally[1] += n1
    return out | segment_tests(per_item, split, policy)


def segment_tests(
    per_item: dict[tuple[str, str], list[int]], split: float, policy: Policy
) -> dict[str, Any]:
    """The per-value tests and their Holm adjustment, from units per arm of each
    ``(field, value)`` (pure)."""
    sp = policy.srm
    rows: list[dict[str, Any]] = []
    skipped: Counter[str] = Counter()
    for (fld, value), (n0, n1) in per_item.items():
        if n0 + n1 < sp.min_segment_units:
            skipped[fld] += 1
            continue
        res = proportions.srm_test([n0, n1], [1 - split, split], sp.alpha, sp.min_share_diff,
                                   policy.sequential.tau)  # fmt: skip
        rows.append({"field": fld, "value": value, "observed": [n0, n1],
                     "expected": [f((n0 + n1) * (1 - split)), f((n0 + n1) * split)],
                     "p_value": f(res.pvalue), "sequential_p_value": f(res.sequential_pvalue),
                     "max_share_diff": f(res.max_share_diff), "_dev": res.max_share_diff or 0.0,
                     "state": res.state})  # fmt: skip
    adjusted = stats.holm([r["sequential_p_value"] for r in rows])
    for r, adj in zip(rows, adjusted, strict=True):
        dev = r.pop("_dev")
        r["sequential_p_holm"] = f(adj)
        r["mismatch"] = bool(adj is not None and adj < sp.alpha and dev > sp.min_share_diff)
    rows.sort(key=lambda r: (r["sequential_p_holm"] is None, r["sequential_p_holm"] or 0.0,
                             r["field"], str(r["value"])))  # fmt: skip
    mismatched = [f"{r['field']}={r['value']}" for r in rows if r["mismatch"]]
    return {
        # nothing testable is not a reason to wait: the overall test still judges the split
        "state": "ok" if rows else "not_applicable",
        "reason": (
            f"mismatch in {', '.join(mismatched)}" if mismatched
            else f"{len(rows)} segment values tested, none mismatched" if rows
            else f"no segment value has {sp.min_segment_units} units (none tested)"
        ),
        "tested": len(rows),
        "skipped_small": dict(skipped),
        "rows": rows[:200],
        "mismatched": mismatched,
        "method": "srm test per segment value (units at first exposure); always-valid p-values "
        "Holm-adjusted over every value tested; mismatch: adjusted p < srm.alpha and a share "
        "deviation above srm.min_share_diff",
    }
