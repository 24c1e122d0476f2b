"""Divergence gates (descriptive: a threshold on a point estimate, no test; a failure holds): the
challenger's predictions against the champion's on the same mirrored requests, by an absolute
limit (``divergence_<measure>``) and relative to the champion's own nondeterminism
(``divergence_<measure>_vs_noise``: at most k times the noise floor, Diffy's relative
threshold)."""

from __future__ import annotations

from functools import partial
from typing import Any

from router.analysis.gates.rows import NO_PAIRS, NO_TEST, fmt, row
from router.analysis.gates.rules import FAIL, NOT_APPLICABLE, NOT_ENOUGH_DATA, PASS
from router.analysis.policy import Policy
from router.analysis.sections.noise_floor import MEASURES, measures_of

_descriptive = partial(row, kind="divergence", test=NO_TEST, always_valid=False, tested=False)


def divergence_gates(report: dict[str, Any], policy: Policy) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    div, nf = report["divergence"], report.get("noise_floor") or {}
    kind = div["kind"]
    chall = measures_of(div, kind)
    noise = nf.get("measures") or {}
    pairs = report["counts"]["mirrored_pairs"]
    for m, lim in policy.divergence.limits.items():
        val = chall.get(m)
        if lim.max is not None:
            nh = f"the challenger's {m} against the champion at most {lim.max:g}"
            if m not in MEASURES.get(kind, ()):
                state, why = NOT_APPLICABLE, f"no {m} for {kind} predictions"
            elif not pairs:
                state, why = NOT_APPLICABLE, NO_PAIRS
            elif val is None:
                state, why = NOT_ENOUGH_DATA, f"{m}: not computable yet"
            else:
                state = FAIL if val > lim.max else PASS
                why = f"challenger vs champion on the same requests: {m} {fmt(val)}"
            out.append(_descriptive(name=f"divergence_{m}", state=state, value=val,
                                    threshold=lim.max, reason=why, null_hypothesis=nh))  # fmt: skip
        if lim.max_noise_multiple is not None:
            k = lim.max_noise_multiple
            nh = f"the challenger's {m} at most {k:g} x the champion's own {m} (noise floor)"
            nv = noise.get(m)
            thr = None if nv is None else k * nv
            if m not in MEASURES.get(kind, ()):
                state, why = NOT_APPLICABLE, f"no {m} for {kind} predictions"
            elif not pairs:
                state, why = NOT_APPLICABLE, NO_PAIRS
            elif nf.get("comparable", 0) < lim.min_noise_pairs or nv is None or thr is None:
                state = NOT_ENOUGH_DATA
                why = (
                    f"{nf.get('comparable', 0)} noise-floor pairs (needs {lim.min_noise_pairs}; "
                    "set experiment.noise_floor)"
                )
            elif val is None:
                state, why = NOT_ENOUGH_DATA, f"{m}: not computable yet"
            else:
                state = FAIL if val > thr else PASS
                why = (
                    f"challenger {m} {fmt(val)} vs the champion's own {fmt(nv)} "
                    f"({nf.get('comparable', 0)} repeat pairs): limit {k:g} x = {fmt(thr)}"
                )
            out.append(_descriptive(name=f"divergence_{m}_vs_noise", state=state, value=val,
                                    threshold=thr, reason=why, null_hypothesis=nh))  # fmt: skip
    return out
