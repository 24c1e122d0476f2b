"""The ``divergence`` section: how the two models' predictions differ on the same mirrored
requests (by prediction kind: score and value distributions, class agreement and confusion,
vector agreement), and the response ``contract`` (fields missing, extra or retyped)."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np
from scipy import stats as st

from router.analysis import measures, stats
from router.analysis.accumulate import Accumulator
from router.analysis.jsonsafe import f
from router.analysis.policy import Policy
from router.analysis.text import text_section


def divergence_section(acc: Accumulator, policy: Policy) -> dict[str, Any]:
    kind = acc.kind
    pa = acc.paired
    out: dict[str, Any] = {"kind": kind, "pairs": pa.pairs, "comparable": pa.comparable}
    pm = pa.moments
    n = pm.n
    if kind in ("score", "value") and n >= 1:
        mad = pm.sabs / n
        dm = pm.diff  # d = challenger - champion, Welford moments: no cancellation
        rmse = math.sqrt(max(dm.m2 / n + dm.mu * dm.mu, 0.0))
        co = pm.co
        scale = max(abs(co.mx), abs(co.my), 1e-300) ** 2
        ok = co.cxx > 1e-24 * n * scale and co.cyy > 1e-24 * n * scale
        pearson = co.cxy / math.sqrt(co.cxx * co.cyy) if ok else None
        out |= {"n": int(n), "mean_abs_diff": f(mad), "rmse": f(rmse), "pearson": f(pearson)}
        items = acc.paired.sample.items()
        xs, ys = items[:, 0], items[:, 1]
        out["sample"] = {
            "n": int(xs.size),
            "of": acc.paired.sample.seen,
            "complete": acc.paired.sample.complete,
            "method": "bottom-k sample by a stable hash of request_id",
        }
        out |= _distribution_stats(xs, ys, policy)
        if kind == "score":
            out["flip_rate"] = {str(t): f(pa.flips[i] / n) for i, t in enumerate(acc.thresholds)}
        else:
            diff = stats.paired_mean_centred(n, dm.mu, dm.m2, policy.alpha)
            out["mean_signed_diff"] = {
                "estimate": f(diff.estimate),
                "ci": diff.ci.as_list(),
                "p_value": f(diff.pvalue),
                "state": diff.state,
            }
    elif kind == "class" and acc.paired.confusion:
        total = sum(acc.paired.confusion.values())
        labels_count: Counter[str] = Counter()
        for (a, b), c in acc.paired.confusion.items():
            labels_count[a] += c
            labels_count[b] += c
        top = [lab for lab, _ in labels_count.most_common(10)]
        idx = {lab: i for i, lab in enumerate(top)}
        mat = np.zeros((len(top) + 1, len(top) + 1), dtype=np.int64)
        for (a, b), c in acc.paired.confusion.items():
            mat[idx.get(a, len(top)), idx.get(b, len(top))] += c
        agree = sum(c for (a, b), c in acc.paired.confusion.items() if a == b)
        full_labels = sorted(labels_count)
        fi = {lab: i for i, lab in enumerate(full_labels)}
        full = np.zeros((len(full_labels), len(full_labels)))
        for (a, b), c in acc.paired.confusion.items():
            full[fi[a], fi[b]] += c
        out |= {
            "n": total,
            "agreement": f(agree / total),
            "cohen_kappa": f(measures.cohen_kappa(full)),
            "confusion": {
                "labels": top + (["other"] if len(labels_count) > len(top) else []),
                "rows": "champion",
                "columns": "challenger",
                "matrix": mat[
                    : len(top) + (len(labels_count) > len(top)),
                    : len(top) + (len(labels_count) > len(top)),
                ].tolist(),
            },
        }
    elif kind == "text" and acc.paired.text.n >= 1:
        out |= {"n": acc.paired.text.n, "text": text_section(acc.paired.text, policy.alpha)}
    elif kind == "vector" and acc.paired.vector_pairs >= 1:
        nv = acc.paired.vector_pairs
        out |= {
            "n": nv,
            "argmax_agreement": f(acc.paired.vector_agree / nv),
            "mean_js_distance": f(acc.paired.vector_js / nv),
        }
    else:
        out |= {"n": 0, "state": "not_enough_data"}
    out["contract"] = _contract(acc, policy)
    return out


def _distribution_stats(xs: np.ndarray, ys: np.ndarray, policy: Policy) -> dict[str, Any]:
    if xs.size < 2:
        return {"state": "not_enough_data"}
    bins = policy.divergence.psi_bins
    edges = np.unique(np.quantile(xs, np.linspace(0, 1, bins + 1)[1:-1]))
    cx = np.bincount(np.searchsorted(edges, xs, side="right"), minlength=edges.size + 1)
    cy = np.bincount(np.searchsorted(edges, ys, side="right"), minlength=edges.size + 1)
    ks = st.ks_2samp(xs, ys)
    sdx = float(np.std(xs))
    wd = float(st.wasserstein_distance(xs, ys))
    rho = st.spearmanr(xs, ys).statistic if np.ptp(xs) > 0 and np.ptp(ys) > 0 else None
    return {
        "spearman": f(rho),
        "psi": f(measures.psi(cx, cy)),
        "psi_band": measures.psi_band(measures.psi(cx, cy)),
        "psi_bins": int(edges.size + 1),
        "ks": {"statistic": f(ks.statistic), "p_value": f(ks.pvalue)},
        "js_distance": f(measures.jensen_shannon(cx, cy)),
        "wasserstein": f(wd),
        "wasserstein_normalised": f(wd / sdx) if sdx > 0 else None,
    }


def _contract(acc: Accumulator, policy: Policy) -> dict[str, Any]:
    n = acc.paired.comparable
    noise = policy.divergence.contract_noise_share
    paths: list[dict[str, Any]] = []
    for (kind, path), c in sorted(acc.paired.contract.items(), key=lambda kv: -kv[1]):
        share = c / n if n else 0.0
        if share > noise:
            paths.append({"path": path, "change": kind, "pairs": c, "share": f(share)})
    return {
        "comparable_pairs": n,
        "noise_share": noise,
        "paths": paths[:100],
        "max_share": f(max((float(p["share"] or 0.0) for p in paths), default=0.0)),
        "max_path_pairs": max(acc.paired.contract.values(), default=0),
        "method": "per JSON path: share of comparable mirrored pairs where the challenger's field "
        "is missing, extra or of another type; reported above the noise share",
    }
