"""The ``drift`` section: captured input fields against a reference (PSI with its band, the
Jensen-Shannon distance, and the drift test chosen by the reference's size, per field:
:mod:`router.analysis.drift_tests`), and the reference statistics format itself
(``--reference-stats``, ``--write-reference-stats``; ``fine``: the 1% log-bin counts, for the
size-chosen tests; files without it are tested on their decile bins)."""

from __future__ import annotations

from typing import Any

import numpy as np

from router.analysis import measures
from router.analysis.accumulate import Accumulator
from router.analysis.drift_tests import DriftRules, DriftTest, categorical, numeric_binned
from router.analysis.fields import fine_bin_value
from router.analysis.jsonsafe import f
from router.analysis.policy import Policy


def drift_section(
    acc: Accumulator, policy: Policy, reference: dict[str, Any] | None
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "bands": {"stable": "< 0.1", "moderate": "0.1 - 0.25", "major": ">= 0.25"},
        "fields": {},
    }
    if reference is None:
        out["state"] = "no_reference"
        out["reason"] = "pass --reference-since/--reference-until or --reference-stats"
        return out
    ref_fields = reference.get("fields", {})
    dp = policy.drift
    rules = DriftRules(dp.small_n, dp.alpha, dp.wasserstein_threshold, dp.js_threshold)
    for name, ref in ref_fields.items():
        cur_num = acc.fields.numeric.get(name)
        cur_cat = acc.fields.categorical.get(name)
        test: DriftTest | None = None
        if "edges" in ref and cur_num:
            edges = np.asarray(ref["edges"], dtype=float)
            rc = np.asarray(ref["counts"], dtype=float)
            cc = np.zeros(edges.size + 1)
            for b, c in cur_num.items():
                cc[int(np.searchsorted(edges, fine_bin_value(b), side="right"))] += c
            p = measures.psi(rc, cc)
            js = measures.jensen_shannon(rc, cc) if rc.sum() and cc.sum() else None
            test = _numeric_test(ref, cur_num, edges, rc, cc, rules)
        elif "categories" in ref and cur_cat:
            cats = sorted(set(ref["categories"]) | set(cur_cat))
            rc = np.asarray([ref["categories"].get(c, 0) for c in cats], dtype=float)
            cc = np.asarray([cur_cat.get(c, 0) for c in cats], dtype=float)
            p = measures.psi(rc, cc)
            js = measures.jensen_shannon(rc, cc) if rc.sum() and cc.sum() else None
            test = categorical(rc, cc, rules)
        else:
            continue
        out["fields"][name] = {
            "psi": f(p),
            "band": measures.psi_band(p),
            "js_distance": f(js),
            "n": int(cc.sum()),
            "test": test.as_dict(),
        }
    out["state"] = "ok"
    out["max_psi"] = f(max((d["psi"] or 0.0 for d in out["fields"].values()), default=None))
    judged = [n for n, d in out["fields"].items() if d["test"]["drift"] is not None]
    drifted = [n for n in judged if out["fields"][n]["test"]["drift"]]
    out["drifted_fields"] = drifted
    out["drifted_share"] = f(len(drifted) / len(judged)) if judged else None
    out["test_rules"] = (
        f"by reference size (Evidently): n <= {dp.small_n}: KS (numeric) or chi-square "
        f"(categorical), drift when p < {dp.alpha}; above: Wasserstein / reference SD >= "
        f"{dp.wasserstein_threshold} or Jensen-Shannon >= {dp.js_threshold}"
    )
    return out


def _numeric_test(
    ref: dict[str, Any],
    cur: dict[int, int],
    edges: np.ndarray,
    rc: np.ndarray,
    cc: np.ndarray,
    rules: DriftRules,
) -> DriftTest:
    """On the fine (1%) log bins when the reference has them (``fine``), else on the
    reference's decile bins (values: bin middles, the outer bins at their edge)."""
    fine = ref.get("fine")
    if fine:
        keys = sorted(set(int(k) for k in fine["bins"]) | set(cur),
                      key=fine_bin_value)  # fmt: skip
        rmap = dict(zip((int(k) for k in fine["bins"]), fine["counts"], strict=True))
        vals = np.asarray([fine_bin_value(k) for k in keys])
        r = np.asarray([float(rmap.get(k, 0.0)) for k in keys])
        c = np.asarray([float(cur.get(k, 0)) for k in keys])
        return numeric_binned(vals, r, c, rules)
    if edges.size:
        mids = (edges[1:] + edges[:-1]) / 2
        vals = np.concatenate([[edges[0]], mids, [edges[-1]]])
    else:
        vals = np.zeros(1)
    return numeric_binned(vals, rc, cc, rules)


def reference_stats(acc: Accumulator, bins: int = 10) -> dict[str, Any]:
    """Reference statistics (decile edges and counts per numeric field, category counts) of an
    accumulator's captured fields: the format ``--reference-stats`` reads."""
    fields: dict[str, Any] = {}
    for name, c in acc.fields.numeric.items():
        keys = sorted(c)
        vals = np.asarray([fine_bin_value(k) for k in keys])
        cnt = np.asarray([c[k] for k in keys], dtype=float)
        cum = np.cumsum(cnt) / cnt.sum()
        edges = np.unique(
            [
                vals[min(int(np.searchsorted(cum, q)), vals.size - 1)]
                for q in np.linspace(0, 1, bins + 1)[1:-1]
            ]
        )
        counts = np.zeros(edges.size + 1)
        for v, k in zip(vals, cnt, strict=True):
            counts[int(np.searchsorted(edges, v, side="right"))] += k
        fields[name] = {"edges": edges.tolist(), "counts": counts.tolist(),
                        "fine": {"bins": keys, "counts": cnt.tolist()}}  # fmt: skip
    for name, cc in acc.fields.categorical.items():
        fields[name] = {"categories": dict(cc.most_common(200))}
    return {"fields": fields}
