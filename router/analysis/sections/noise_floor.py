"""The ``noise_floor`` section: how much the champion disagrees with itself on the same request
(``experiment.noise_floor`` asks it twice), and the challenger's divergence judged against that.

Nondeterministic models (sampling, GPU kernels, batching) make raw flip rates misleading: a
challenger identical to the champion still "flips" some decisions. Diffy's answer is a second
copy of the primary service: differences no larger than the primary's differences with itself
are noise. Here the champion's repeat plays that copy: the section reports the same divergence
statistics for the champion-vs-champion pairs as the ``divergence`` section does for the
mirrored pairs, a table of comparable measures for both (``measures``, larger = more divergent),
their ratio (``multiple``: the challenger's divergence in units of the noise floor), and per
response path the share of pairs whose value or shape differs for the challenger beside the
same share for the champion's repeat (``contract``). Text predictions are not covered yet (no
text prediction kind exists).
"""

from __future__ import annotations

from typing import Any

from router.analysis.accumulate import Accumulator
from router.analysis.jsonsafe import f
from router.analysis.policy import Policy
from router.analysis.sections.divergence import divergence_of

# comparable measures per prediction kind, each "larger = more divergent"
MEASURES: dict[str, tuple[str, ...]] = {
    "score": ("flip_rate", "mean_abs_diff", "rmse", "rank_decorrelation"),
    "value": ("mean_abs_diff", "rmse", "rank_decorrelation"),
    "class": ("disagreement",),
    "vector": ("disagreement", "mean_js_distance"),
}


def measures_of(div: dict[str, Any], kind: str) -> dict[str, float | None]:
    """The comparable measures of a ``divergence`` dict: ``flip_rate`` at the first threshold,
    ``rank_decorrelation`` = 1 − Spearman's rho, ``disagreement`` = 1 − (argmax) agreement."""
    out: dict[str, float | None] = {}
    for m in MEASURES.get(kind, ()):
        v: Any = None
        if m == "flip_rate":
            fr = div.get("flip_rate") or {}
            v = next(iter(fr.values()), None)
        elif m == "rank_decorrelation":
            rho = div.get("spearman")
            v = None if rho is None else 1.0 - rho
        elif m == "disagreement":
            a = div.get("agreement", div.get("argmax_agreement"))
            v = None if a is None else 1.0 - a
        else:
            v = div.get(m)
        out[m] = f(v)
    return out


def noise_floor_section(
    acc: Accumulator, policy: Policy, divergence: dict[str, Any]
) -> dict[str, Any]:
    pa = acc.noise
    out: dict[str, Any] = {"pairs": pa.pairs, "comparable": pa.comparable, "kind": acc.kind}
    if not pa.pairs:
        out |= {"state": "no_pairs", "measures": {}, "challenger": {}, "multiple": {},
                "contract": []}  # fmt: skip
        return out
    self_div = divergence_of(pa, acc.kind, acc.thresholds, policy)
    noise = measures_of(self_div, acc.kind)
    chall = measures_of(divergence, acc.kind)
    multiple: dict[str, float | None] = {}
    for m, nv in noise.items():
        cv = chall.get(m)
        multiple[m] = f(cv / nv) if cv is not None and nv is not None and nv > 0 else None
    out |= {
        "state": "ok" if pa.comparable else "no_comparable_pairs",
        "measures": noise,
        "challenger": chall,
        "multiple": multiple,
        "divergence": self_div,
        "contract": _contract_vs_noise(acc),
        "method": "the champion asked twice on the same requests (experiment.noise_floor); "
        "multiple = challenger's measure / the champion's own (Diffy's relative threshold)",
    }
    return out


def _contract_vs_noise(acc: Accumulator) -> list[dict[str, Any]]:
    """Per (change, path) seen in either set of pairs: its share among the challenger's
    comparable pairs and among the noise floor's, the most frequent first (at most 100)."""
    cn, nn = acc.paired.comparable, acc.noise.comparable
    keys = set(acc.paired.contract) | set(acc.noise.contract)
    rows: list[dict[str, Any]] = []
    for change, path in keys:
        c, n = acc.paired.contract.get((change, path), 0), acc.noise.contract.get((change, path), 0)
        cs = c / cn if cn else None
        ns = n / nn if nn else None
        rows.append({"path": path, "change": change, "challenger_share": f(cs),
                     "noise_share": f(ns),
                     "beyond_noise": bool(cs is not None and (ns is None or cs > ns))})  # fmt: skip
    rows.sort(key=lambda r: (-float(r["challenger_share"] or 0.0), str(r["path"])))
    return rows[:100]
