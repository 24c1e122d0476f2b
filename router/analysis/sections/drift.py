"""The ``drift`` section: captured input fields against a reference (PSI with its band and the
Jensen-Shannon distance per field), and the reference statistics format itself
(``--reference-stats``, ``--write-reference-stats``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from router.analysis import measures
from router.analysis.accumulate import Accumulator
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
    for name, ref in ref_fields.items():
        cur_num = acc.fields.numeric.get(name)
        cur_cat = acc.fields.categorical.get(name)
        if "edges" in ref and cur_num:
            edges = np.asarray(ref["edges"], dtype=float)
            rc = np.asarray(ref["counts"], dtype=float)
            cc = np.zeros(edges.size + 1)
            for b, c in cur_num.items():
                cc[int(np.searchsorted(edges, fine_bin_value(b), side="right"))] += c
            p = measures.psi(rc, cc)
            js = measures.jensen_shannon(rc, cc) if rc.sum() and cc.sum() else None
        elif "categories" in ref and cur_cat:
            cats = sorted(set(ref["categories"]) | set(cur_cat))
            rc = np.asarray([ref["categories"].get(c, 0) for c in cats], dtype=float)
            cc = np.asarray([cur_cat.get(c, 0) for c in cats], dtype=float)
            p = measures.psi(rc, cc)
            js = measures.jensen_shannon(rc, cc) if rc.sum() and cc.sum() else None
        else:
            continue
        out["fields"][name] = {
            "psi": f(p),
            "band": measures.psi_band(p),
            "js_distance": f(js),
            "n": int(cc.sum()),
        }
    out["state"] = "ok"
    out["max_psi"] = f(max((d["psi"] or 0.0 for d in out["fields"].values()), default=None))
    return out


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
        fields[name] = {"edges": edges.tolist(), "counts": counts.tolist()}
    for name, cc in acc.fields.categorical.items():
        fields[name] = {"categories": dict(cc.most_common(200))}
    return {"fields": fields}
