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
from router.analysis.drift_tests import DriftRules, from_statistics
from router.analysis.jsonsafe import f
from router.analysis.pairs import PairAggregates
from router.analysis.policy import Policy
from router.analysis.text import text_section


def divergence_section(acc: Accumulator, policy: Policy) -> dict[str, Any]:
    return divergence_of(acc.paired, acc.kind, acc.thresholds, policy)


def divergence_of(
    pa: PairAggregates, kind: str, thresholds: list[float], policy: Policy
) -> dict[str, Any]:
    """The divergence statistics of a set of pairs (the mirrored pairs, or the noise floor's
    champion-vs-champion pairs)."""
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
        items = pa.sample.items()
        xs, ys = items[:, 0], items[:, 1]
        out["sample"] = {
            "n": int(xs.size),
            "of": pa.sample.seen,
            "complete": pa.sample.complete,
            "method": "bottom-k sample by a stable hash of request_id",
        }
        out |= _distribution_stats(xs, ys, policy)
        if kind == "score":
            out["flip_rate"] = {str(t): f(pa.flips[i] / n) for i, t in enumerate(thresholds)}
        else:
            diff = stats.paired_mean_centred(n, dm.mu, dm.m2, policy.alpha)
            out["mean_signed_diff"] = {
                "estimate": f(diff.estimate),
                "ci": diff.ci.as_list(),
                "p_value": f(diff.pvalue),
                "state": diff.state,
            }
    elif kind == "class" and pa.confusion:
        total = sum(pa.confusion.values())
        labels_count: Counter[str] = Counter()
        for (a, b), c in pa.confusion.items():
            labels_count[a] += c
            labels_count[b] += c
        top = [lab for lab, _ in labels_count.most_common(10)]
        idx = {lab: i for i, lab in enumerate(top)}
        mat = np.zeros((len(top) + 1, len(top) + 1), dtype=np.int64)
        for (a, b), c in pa.confusion.items():
            mat[idx.get(a, len(top)), idx.get(b, len(top))] += c
        agree = sum(c for (a, b), c in pa.confusion.items() if a == b)
        full_labels = sorted(labels_count)
        fi = {lab: i for i, lab in enumerate(full_labels)}
        full = np.zeros((len(full_labels), len(full_labels)))
        for (a, b), c in pa.confusion.items():
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
    elif kind == "text" and pa.text.n >= 1:
        out |= {"n": pa.text.n, "text": text_section(pa.text, policy.alpha)}
    elif kind == "vector" and pa.vector_pairs >= 1:
        nv = pa.vector_pairs
        out |= {
            "n": nv,
            "argmax_agreement": f(pa.vector_agree / nv),
            "mean_js_distance": f(pa.vector_js / nv),
        }
    else:
        out |= {"n": 0, "state": "not_enough_data"}
    out["contract"] = _contract(pa, policy)
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
    dp = policy.drift
    rules = DriftRules(dp.small_n, dp.alpha, dp.wasserstein_threshold, dp.js_threshold)
    w_norm = wd / sdx if sdx > 0 else None
    drift = from_statistics(int(xs.size), int(ys.size), float(ks.statistic), float(ks.pvalue),
                            w_norm, rules)  # fmt: skip
    return {
        # the champion's predictions as the reference, the test chosen by the sample's size
        "drift_test": drift.as_dict(),
        "spearman": f(rho),
        "psi": f(measures.psi(cx, cy)),
        "psi_band": measures.psi_band(measures.psi(cx, cy)),
        "psi_bins": int(edges.size + 1),
        "ks": {"statistic": f(ks.statistic), "p_value": f(ks.pvalue)},
        "js_distance": f(measures.jensen_shannon(cx, cy)),
        "wasserstein": f(wd),
        "wasserstein_normalised": f(wd / sdx) if sdx > 0 else None,
    }


def _contract(pa: PairAggregates, policy: Policy) -> dict[str, Any]:
    n = pa.comparable
    noise = policy.divergence.contract_noise_share
    paths: list[dict[str, Any]] = []
    changed: list[dict[str, Any]] = []
    for (kind, path), c in sorted(pa.contract.items(), key=lambda kv: -kv[1]):
        share = c / n if n else 0.0
        if kind == "changed":  # a value beyond its tolerance (contract.compare_values)
            changed.append({"path": path, "pairs": c, "share": f(share)})
        elif share > noise:
            paths.append({"path": path, "change": kind, "pairs": c, "share": f(share)})
    breaks = [c for (kind, _p), c in pa.contract.items() if kind != "changed"]
    return {
        "comparable_pairs": n,
        "noise_share": noise,
        "paths": paths[:100],
        "max_share": f(max((float(p["share"] or 0.0) for p in paths), default=0.0)),
        "max_path_pairs": max(breaks, default=0),
        "changed": changed[:100],
        "method": "per JSON path: share of comparable pairs where the second answer's field "
        "is missing, extra or of another type (reported above the noise share); 'changed': "
        "leaf values beyond their tolerance (experiment.contract.compare_values)",
    }
