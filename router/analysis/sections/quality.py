"""The ``quality`` section: both models on the same labelled requests (mirrored pairs joined to the
label outcome), with paired tests: accuracy (score interval, McNemar), log loss or squared error,
the RMSE ratio of value predictions and the ROC AUC difference (paired bootstrap)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats as st

from router.analysis import measures, proportions, sequential, stats
from router.analysis.accumulate import VARIANTS, Accumulator
from router.analysis.jsonsafe import f
from router.analysis.policy import Policy
from router.analysis.sections.errors import paired_difference

BOOTSTRAP_ROWS = 20_000  # the AUC bootstrap resamples (the first rows of) the hash sample


def quality_section(acc: Accumulator, policy: Policy) -> dict[str, Any]:
    q = acc.paired.quality
    kind = acc.kind
    out: dict[str, Any] = {
        "label_metric": acc.label_metric,
        "n": q.n,
        "method": "mirrored pairs joined to the label outcome by request_id; "
        "both models on the same requests, paired tests",
    }
    if q.n == 0 and q.with_loss == 0:
        return out | {"state": "not_enough_data"}
    models: dict[str, dict[str, Any]] = {"champion": {}, "challenger": {}}
    for i, name in enumerate(VARIANTS):
        m = models[name]
        if kind == "value":
            n = q.with_loss
            m["mae"] = f(q.brier[i] / n) if n else None
            m["rmse"] = f(math.sqrt(q.loss[i] / n)) if n else None
        else:
            m["accuracy"] = f(q.correct[i] / q.n) if q.n else None
            if q.with_loss:
                m["log_loss"] = f(q.loss[i] / q.with_loss)
            if kind == "score" and q.n:
                m["brier"] = f(q.brier[i] / q.n)
    tests: dict[str, Any] = {}
    if kind != "value" and q.n:
        mc = proportions.mcnemar(q.b, q.c)
        pd = proportions.paired_proportion_diff(q.b, q.c, q.n, policy.alpha)
        tests["accuracy"] = {
            "delta": f((q.correct[1] - q.correct[0]) / q.n),
            **paired_difference(pd, mc),
            "discordant": [q.b, q.c],
        }
    if kind == "value":
        tests["rmse_ratio"] = _rmse_ratio(q.sq_err, policy)
    ld = q.loss_diff
    if ld.n >= 2:
        pt = stats.paired_mean_centred(ld.n, ld.mu, ld.m2, policy.alpha)
        name = "squared_error" if kind == "value" else "log_loss"
        tests[name] = {
            "delta": f(pt.estimate),
            "ci": pt.ci.as_list(),
            "p_value": f(pt.pvalue),
            "method": pt.method,
            "state": pt.state,
        }
    if kind == "score":
        items = acc.paired.labelled_sample.items()
        if items.size:
            y, s1, s2 = items[:, 0], items[:, 1], items[:, 2]
            boot = min(y.size, BOOTSTRAP_ROWS)
            a1, a2 = measures.auc(y, s1), measures.auc(y, s2)
            models["champion"]["roc_auc"] = f(a1)
            models["challenger"]["roc_auc"] = f(a2)
            if policy.bootstrap_resamples:
                d, ci = measures.paired_bootstrap_auc_diff(
                    y[:boot],
                    s1[:boot],
                    s2[:boot],
                    policy.bootstrap_resamples,
                    policy.alpha,
                    policy.seed,
                )
                full = a2 - a1 if a1 is not None and a2 is not None else d
                tests["roc_auc"] = {
                    "delta": f(full),
                    "ci": ci.as_list(),
                    "method": f"paired percentile bootstrap over {boot} labelled pairs, "
                    f"{policy.bootstrap_resamples} resamples, seed {policy.seed}",
                    "sample": {"n": int(y.size), "of": acc.paired.labelled_sample.seen},
                }
    return out | {"state": "ok", "models": models, "tests": tests}


def _rmse_ratio(sq: Any, policy: Policy) -> dict[str, Any]:
    """Challenger RMSE / champion RMSE − 1 on the same labelled requests, with the delta-method
    interval of ``log(MSE_challenger / MSE_champion)`` (paired: the covariance of the two
    squared errors counts) in fixed-horizon and always-valid (mSPRT) form."""
    n = sq.n
    method = ("delta method on log(MSE_challenger / MSE_champion) from the paired squared "
              "errors; sequential: mSPRT normal mixture")  # fmt: skip
    out: dict[str, Any] = {"n": int(n), "method": method}
    none = {"estimate": None, "ci": [None, None], "sequential_ci": [None, None]}
    if n < 2:
        return out | none | {"state": "not_enough_data"}
    lr_a, var_a = stats.log_mse_ratio(n, sq.mx, sq.my, sq.cxx, sq.cyy, sq.cxy)
    lr, var = float(lr_a), float(var_a)
    if not (math.isfinite(var) and var > 0):
        return out | none | {"state": "zero_variance"}
    z = float(st.norm.ppf(1 - policy.alpha / 2))
    h = z * math.sqrt(var)
    _p, slo, shi = sequential.normal_mixture_ci(lr, var, rmse_tau(var, n, policy), policy.alpha)

    def back(x: float) -> float | None:
        return f(math.exp(x / 2) - 1)

    return out | {"state": "ok", "estimate": back(lr), "log_mse_ratio": f(lr),
                  "ci": [back(lr - h), back(lr + h)],
                  "sequential_ci": [back(float(slo)), back(float(shi))]}  # fmt: skip


def rmse_tau(var: Any, n: Any, policy: Policy) -> Any:
    """The mSPRT mixture spread for the log MSE ratio: ``sequential.tau`` times the estimated
    per-pair standard deviation of its influence function, ``sqrt(n · var)``."""
    return policy.sequential.tau * np.sqrt(np.asarray(var) * np.asarray(n))
