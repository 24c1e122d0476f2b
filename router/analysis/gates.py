"""Gates and the promotion decision (pure: report sections in, gate rows and a decision out).

Every gate states its null hypothesis, its test, whether that test stays valid under repeated
looks, and what it saw (DESIGN principle 7). A row is::

    {name, kind, state, passed, significant, value, threshold, reason,
     null_hypothesis, test, always_valid, ci, better}

``state`` is one of

* ``pass``: the evidence clears the gate (for a tested gate: the whole always-valid interval is
  on the good side of the threshold, i.e. the test of "worse than the threshold" rejects);
* ``fail``: for a tested gate, the whole interval is past the threshold (the test of "within the
  threshold" rejects); for a descriptive gate (drift, fairness), the point estimate is past it;
* ``inconclusive``: the interval still contains the threshold: more data will tell;
* ``not_enough_data``: the test cannot be computed yet (no data, or a quantile whose order
  statistic does not exist at this n);
* ``not_evaluable``: the data needed for the gate is missing or degenerate (no labels joined,
  no variance in either arm) and will not appear by waiting alone;
* ``not_applicable``: the gate does not apply to this window (no live split in a shadow step,
  no reference for input drift, a prediction kind without that statistic);
* ``warn``: advisory only: shown, and listed in the decision's reasons, never blocking.

``passed`` is ``state in (pass, not_applicable)`` and ``significant`` is ``state == fail`` for a
tested gate. The decision (:func:`decide`): **rollback** when a guardrail, the response contract
or the primary metric *fails* (its interval lies past the threshold, or entirely below zero for
the primary metric); else **hold** when any other gate fails (sample ratio, fairness, drift, or a
gate kind added later, e.g. data quality); else **continue** while any gate is inconclusive, not
enough data or not evaluable (a gate that could not be evaluated never counts as a pass); else
**promote**.

Tested gates use always-valid intervals (confidence sequences, :mod:`router.analysis.sequential`)
because the promotion controller re-evaluates them at every look: the chance that a gate at its
threshold ever fails (a false rollback) or ever passes (a false promote) over any number of looks
is at most α. :func:`apply_running` intersects the intervals across the controller's looks of one
step (the intersection of a confidence sequence is one too).

The decision cores (``*_state``) are vectorised functions of summary statistics, so the test
suite simulates exactly the code that decides.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from router.analysis import sequential as sq
from router.analysis.data_quality import data_quality_gates, empty_window_decision
from router.analysis.policy import Policy

PASS = "pass"
FAIL = "fail"
INCONCLUSIVE = "inconclusive"
NOT_ENOUGH_DATA = "not_enough_data"
NOT_EVALUABLE = "not_evaluable"
NOT_APPLICABLE = "not_applicable"
WARN = "warn"
STATES = (PASS, FAIL, INCONCLUSIVE, NOT_ENOUGH_DATA, NOT_EVALUABLE, NOT_APPLICABLE, WARN)
WAITING = (INCONCLUSIVE, NOT_ENOUGH_DATA, NOT_EVALUABLE)
ROLLBACK_KINDS = ("guardrail", "schema", "primary")

CS_BOUNDED = (
    "confidence sequence for the mean of a bounded variable (gamma-exponential mixture, "
    "Howard et al. 2021); exact at any sample size"
)
CS_QUANTILE = (
    "confidence sequence for a quantile from order statistics (beta-binomial boundary, "
    "Howard & Ramdas 2022); distribution-free"
)
CS_PROPORTIONS = (
    "confidence sequences for each proportion (beta-binomial mixture, Robbins 1970), "
    "combined at alpha/2 each; exact at any sample size"
)
CS_NORMAL = "mSPRT normal-mixture confidence sequence (Johari et al. 2017); asymptotic"
NO_TEST = "threshold on the point estimate (descriptive; no test)"
NO_PAIRS = "no mirrored pairs in this window: compared in the mirrored (shadow) steps"


# ------------------------------------------------------------------------------ rows
def _row(
    name: str,
    kind: str,
    state: str,
    value: Any,
    threshold: Any,
    reason: str,
    *,
    null_hypothesis: str,
    test: str,
    always_valid: bool,
    ci: Sequence[float | None] | None = None,
    better: str | None = None,
    tested: bool = True,
    p_value: float | None = None,
) -> dict[str, Any]:
    assert state in STATES, state
    return {
        "name": name,
        "kind": kind,
        "state": state,
        "passed": state in (PASS, NOT_APPLICABLE),
        "significant": tested and state == FAIL,
        "value": _num(value),
        "threshold": _num(threshold),
        "reason": reason,
        "null_hypothesis": null_hypothesis,
        "test": test,
        "always_valid": bool(always_valid),
        "ci": None if ci is None else [_num(ci[0]), _num(ci[1])],
        "better": better,
        "p_value": _num(p_value),
    }


def _num(x: Any) -> float | None:
    if x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _fmt(x: Any, nd: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{nd}g}" if isinstance(x, float) else str(x)


def _ci_text(lo: float | None, hi: float | None, nd: int = 4) -> str:
    return f"[{_fmt(lo, nd)}, {_fmt(hi, nd)}]"


# ------------------------------------------------------------------------------ decision cores
def interval_state(
    low: np.ndarray | float | None,
    high: np.ndarray | float | None,
    threshold: float,
    better: str,
) -> np.ndarray:
    """The state of a tolerance gate from an always-valid interval (vectorised; NaN or None
    marks a side that does not exist yet). ``better="lower"``: the quantity must stay at or
    below ``threshold``: fail when ``low > threshold``, pass when ``high <= threshold``.
    ``better="higher"``: it must stay at or above: fail when ``high < threshold``, pass when
    ``low >= threshold``. Otherwise inconclusive, or not enough data when the side that
    would decide it is missing."""
    lo = np.asarray(np.nan if low is None else low, float)
    hi = np.asarray(np.nan if high is None else high, float)
    if better == "lower":
        fail, ok = lo > threshold, hi <= threshold
        undecided_missing = np.isnan(hi) & ~fail
    else:
        fail, ok = hi < threshold, lo >= threshold
        undecided_missing = np.isnan(lo) & ~fail
    out = np.where(fail, FAIL, np.where(ok, PASS, INCONCLUSIVE)).astype(object)
    return np.where(undecided_missing, NOT_ENOUGH_DATA, out)


def paired_tolerance_state(
    n: np.ndarray | float,
    b: np.ndarray | float,
    c: np.ndarray | float,
    threshold: float,
    better: str,
    alpha: float,
) -> np.ndarray:
    """State of a tolerance gate on a paired difference of binary outcomes ``(c − b)/n``
    (``c``: pairs where only the challenger has the event, ``b``: only the champion): the
    always-valid tests of :func:`router.analysis.sequential.bounded_mean_reject` at the
    threshold, for ``D ∈ {−1, 0, 1}`` with ``Σ D = c − b`` and ``Σ D² = b + c``."""
    n = np.asarray(n, float)
    b, c = np.asarray(b, float), np.asarray(c, float)
    mean = np.where(n > 0, (c - b) / np.maximum(n, 1.0), 0.0)
    m2 = (b + c) - n * mean * mean
    above, below = sq.bounded_mean_reject(n, mean, m2, threshold, -1.0, 1.0, alpha)
    if better == "lower":
        fail, ok = above, below
    else:
        fail, ok = below, above
    out = np.where(fail, FAIL, np.where(ok, PASS, INCONCLUSIVE)).astype(object)
    return np.where(n > 0, out, NOT_ENOUGH_DATA)


def live_proportions_interval(
    x1: np.ndarray | float,
    n1: np.ndarray | float,
    x2: np.ndarray | float,
    n2: np.ndarray | float,
    alpha: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Always-valid interval of ``p2 − p1`` for two independent (or not: a union bound needs no
    independence) proportions: ``[L2 − U1, U2 − L1]`` from each arm's
    :func:`~router.analysis.sequential.proportion_cs` at α/2."""
    l1, u1 = sq.proportion_cs(x1, n1, alpha / 2)
    l2, u2 = sq.proportion_cs(x2, n2, alpha / 2)
    return l2 - u1, u2 - l1


def primary_state(
    low: np.ndarray | float | None, high: np.ndarray | float | None, min_uplift: float
) -> np.ndarray:
    """The primary metric (oriented so that higher is better): pass when the always-valid
    lower bound clears ``min_uplift``; fail (harm: rollback) when the whole interval is below 0;
    else inconclusive."""
    lo = np.asarray(np.nan if low is None else low, float)
    hi = np.asarray(np.nan if high is None else high, float)
    out = np.where(hi < 0, FAIL, np.where(lo > min_uplift, PASS, INCONCLUSIVE)).astype(object)
    return np.where(np.isnan(lo) | np.isnan(hi), NOT_EVALUABLE, out)


def _state(x: np.ndarray) -> str:
    return str(np.asarray(x).reshape(-1)[0])


# ------------------------------------------------------------------------------ gates
def evaluate(report: dict[str, Any], policy: Policy) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """All gates of a report, then the decision."""
    gates: list[dict[str, Any]] = []
    live = _live(report)
    gates.append(_min_samples(report, policy, live))
    gates.append(_srm(report, policy))
    g = policy.guardrails
    if g.max_latency_p95_ms is not None:
        gates.append(_latency_p95(report, g.max_latency_p95_ms))
    if g.max_latency_regression_ms is not None:
        gates.append(_latency_regression(report, g.max_latency_regression_ms))
    if g.max_error_rate_delta is not None:
        gates.append(_error_rate(report, g.max_error_rate_delta, policy.alpha))
    gates.extend(_quality_gates(report, policy))
    if g.max_contract_break_share is not None:
        gates.append(_contract(report, g.max_contract_break_share, policy.alpha))
    gates.extend(_drift_gates(report, policy))
    gates.extend(_fairness_gates(report, policy))
    if policy.primary_metric is not None:
        gates.append(_primary(report, policy, live))
    gates += data_quality_gates(report, policy, gates)
    return gates, decide(gates, report)


def _live(report: dict[str, Any]) -> bool:
    u = report["counts"]["units"]
    return bool(u["challenger"] > 0 and u["champion"] > 0)


def _min_samples(report: dict[str, Any], policy: Policy, live: bool) -> dict[str, Any]:
    counts = report["counts"]
    if live:
        n = min(counts["units"]["champion"], counts["units"]["challenger"])
        what = "units in the smaller arm of the live split"
    else:
        n = counts["comparable_pairs"]
        what = "comparable mirrored pairs"
    state = PASS if n >= policy.min_samples else NOT_ENOUGH_DATA
    return _row(
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


def _srm(report: dict[str, Any], policy: Policy) -> dict[str, Any]:
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
        f"a split of {_fmt(srm['split'])} (always-valid p={_fmt(srm.get('sequential_p_value'))},"
        f" chi-square p={_fmt(srm['p_value'])}, max share deviation "
        f"{_fmt(srm['max_share_diff'])})"
    )
    return _row(
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


def _latency_p95(report: dict[str, Any], limit: float) -> dict[str, Any]:
    lat = report["latency"]
    served = lat["per_variant"]["challenger"]
    if served["n"] > 0:
        src, q = "served requests", served
    else:
        src, q = "mirrored requests", lat["paired"]["per_side"]["challenger"]
    lo, hi = q["always_valid"]["p95"]
    nh = f"the challenger's p95 latency is at most {limit:g} ms"
    if q["n"] == 0:
        return _row(
            "latency_p95",
            "guardrail",
            NOT_ENOUGH_DATA,
            None,
            limit,
            "no challenger latencies yet",
            null_hypothesis=nh,
            test=CS_QUANTILE,
            always_valid=True,
            ci=[lo, hi],
            better="lower",
        )
    state = _state(interval_state(lo, hi, limit, "lower"))
    why = (
        f"challenger p95 {_fmt(q['p95'], 5)} ms on {q['n']} {src}, always-valid interval "
        + _ci_text(lo, hi, 5)
    )
    if state == NOT_ENOUGH_DATA:
        why += f" (an upper bound needs about {q['always_valid']['min_n']['p95']} latencies)"
    return _row(
        "latency_p95",
        "guardrail",
        state,
        q["p95"],
        limit,
        why,
        null_hypothesis=nh,
        test=CS_QUANTILE,
        always_valid=True,
        ci=[lo, hi],
        better="lower",
    )


def _latency_regression(report: dict[str, Any], limit: float) -> dict[str, Any]:
    lat = report["latency"]
    paired = lat["paired"]["quantiles"]["p95"]
    live = lat["live_delta"]["p95"]
    if lat["paired"]["per_side"]["challenger"]["n"] > 0:
        q, src = paired, "the same mirrored requests"
    else:
        q, src = live, "the live split's served requests"
    nh = f"challenger p95 − champion p95 is at most {limit:g} ms"
    test = CS_QUANTILE + ", one per side at alpha/2, differenced"
    lo, hi = q["delta_cs"]
    if q["delta_ms"] is None:
        return _row(
            "latency_regression",
            "guardrail",
            NOT_ENOUGH_DATA,
            None,
            limit,
            "no latencies of both models yet",
            null_hypothesis=nh,
            test=test,
            always_valid=True,
            ci=[lo, hi],
            better="lower",
        )
    state = _state(interval_state(lo, hi, limit, "lower"))
    why = (
        f"challenger p95 − champion p95 on {src}: {q['delta_ms']:+.1f} ms, always-valid "
        f"interval {_ci_text(lo, hi, 4)}"
    )
    return _row(
        "latency_regression",
        "guardrail",
        state,
        q["delta_ms"],
        limit,
        why,
        null_hypothesis=nh,
        test=test,
        always_valid=True,
        ci=[lo, hi],
        better="lower",
    )


def _error_rate(report: dict[str, Any], limit: float, alpha: float) -> dict[str, Any]:
    err = report["errors"]
    nh = f"challenger − champion error rate is at most {limit:g}"
    pe = err["paired"]
    if pe["n"] > 0:
        n, b, c = pe["n"], pe["discordant"]["champion_only"], pe["discordant"]["challenger_only"]
        lo_a, hi_a = sq.bounded_mean_cs(n, (c - b) / n, (b + c) - (c - b) ** 2 / n, -1, 1, alpha)
        state = _state(paired_tolerance_state(n, b, c, limit, "lower", alpha))
        d, src, test = (c - b) / n, f"{n} mirrored pairs", CS_BOUNDED + " (paired)"
    else:
        pv = err["per_variant"]
        x1, n1 = pv["champion"]["errors"], pv["champion"]["n"]
        x2, n2 = pv["challenger"]["errors"], pv["challenger"]["n"]
        if n1 == 0 or n2 == 0:
            return _row(
                "error_rate_delta",
                "guardrail",
                NOT_ENOUGH_DATA,
                None,
                limit,
                "no requests on both models yet",
                null_hypothesis=nh,
                test=CS_PROPORTIONS,
                always_valid=True,
                better="lower",
            )
        lo_a, hi_a = live_proportions_interval(x1, n1, x2, n2, alpha)
        state = _state(interval_state(lo_a, hi_a, limit, "lower"))
        d, src, test = x2 / n2 - x1 / n1, f"the live split ({n2} / {n1} requests)", CS_PROPORTIONS
    lo, hi = float(lo_a), float(hi_a)
    why = f"challenger − champion error rate {d:+.4f} on {src}, always-valid interval "
    why += _ci_text(lo, hi)
    return _row(
        "error_rate_delta",
        "guardrail",
        state,
        d,
        limit,
        why,
        null_hypothesis=nh,
        test=test,
        always_valid=True,
        ci=[lo, hi],
        better="lower",
    )


def _quality_gates(report: dict[str, Any], policy: Policy) -> list[dict[str, Any]]:
    g = policy.guardrails
    qual = report["quality"]
    kind = report["divergence"]["kind"]
    out: list[dict[str, Any]] = []
    label = qual["label_metric"]
    missing = (
        f"no mirrored pairs joined to a {label!r} outcome: set guardrails.{{}}: null if "
        "the application posts no labels"
    )
    if report["counts"]["mirrored_pairs"] == 0:
        # both models on the same labelled requests need mirroring: judged in mirrored steps
        missing_state, missing = NOT_APPLICABLE, NO_PAIRS
    else:
        missing_state = NOT_EVALUABLE
    if kind != "value" and g.max_accuracy_drop is not None:
        tol = g.max_accuracy_drop
        nh = f"challenger − champion accuracy is at least −{tol:g}"
        acc = qual.get("tests", {}).get("accuracy")
        if acc is None:
            out.append(
                _row(
                    "accuracy_drop",
                    "guardrail",
                    missing_state,
                    None,
                    -tol,
                    missing.format("max_accuracy_drop"),
                    null_hypothesis=nh,
                    test=CS_BOUNDED + " (paired)",
                    always_valid=True,
                    better="higher",
                )
            )
        else:
            n = qual["n"]
            b, c = acc["discordant"]
            lo, hi = sq.bounded_mean_cs(
                n, (c - b) / n, (b + c) - (c - b) ** 2 / n, -1, 1, policy.alpha
            )
            state = _state(paired_tolerance_state(n, b, c, -tol, "higher", policy.alpha))
            why = (
                f"challenger − champion accuracy {_fmt(acc['delta'])} on {n} labelled pairs,"
                f" always-valid interval {_ci_text(float(lo), float(hi))} (McNemar "
                f"p={_fmt(acc['mcnemar']['p_value'])} against no difference)"
            )
            out.append(
                _row(
                    "accuracy_drop",
                    "guardrail",
                    state,
                    acc["delta"],
                    -tol,
                    why,
                    null_hypothesis=nh,
                    test=CS_BOUNDED + " (paired)",
                    always_valid=True,
                    ci=[float(lo), float(hi)],
                    better="higher",
                )
            )
    if kind == "value" and g.max_rmse_increase is not None:
        tol = g.max_rmse_increase
        nh = f"challenger RMSE / champion RMSE − 1 is at most {tol:g}"
        r = qual.get("tests", {}).get("rmse_ratio")
        if r is None:
            out.append(
                _row(
                    "rmse_increase",
                    "guardrail",
                    missing_state,
                    None,
                    tol,
                    missing.format("max_rmse_increase"),
                    null_hypothesis=nh,
                    test=CS_NORMAL,
                    always_valid=True,
                    better="lower",
                )
            )
        elif r["state"] != "ok":
            out.append(
                _row(
                    "rmse_increase",
                    "guardrail",
                    NOT_ENOUGH_DATA if r["state"] == "not_enough_data" else NOT_EVALUABLE,
                    r["estimate"],
                    tol,
                    f"RMSE ratio: {r['state']}",
                    null_hypothesis=nh,
                    test=CS_NORMAL,
                    always_valid=True,
                    better="lower",
                )
            )
        else:
            lo, hi = r["sequential_ci"]
            state = _state(interval_state(lo, hi, tol, "lower"))
            why = (
                f"challenger RMSE / champion RMSE − 1 = {_fmt(r['estimate'])} on {r['n']} "
                f"labelled pairs, always-valid interval {_ci_text(lo, hi)}"
            )
            out.append(
                _row(
                    "rmse_increase",
                    "guardrail",
                    state,
                    r["estimate"],
                    tol,
                    why,
                    null_hypothesis=nh,
                    test=CS_NORMAL + " on log(MSE ratio), delta method",
                    always_valid=True,
                    ci=[lo, hi],
                    better="lower",
                )
            )
    return out


def _contract(report: dict[str, Any], limit: float, alpha: float) -> dict[str, Any]:
    ct = report["divergence"]["contract"]
    n, worst = ct["comparable_pairs"], ct["max_path_pairs"]
    nh = f"no response field breaks in more than {limit:.2%} of pairs"
    test = (
        "confidence sequence for the share of the most-broken field (beta-binomial, "
        "Robbins 1970), Bonferroni over the fields listed"
    )
    if n == 0:
        unmirrored = report["counts"]["mirrored_pairs"] == 0
        return _row(
            "response_contract",
            "schema",
            NOT_APPLICABLE if unmirrored else NOT_ENOUGH_DATA,
            None,
            limit,
            NO_PAIRS if unmirrored else "no comparable mirrored pairs yet (all had an error)",
            null_hypothesis=nh,
            test=test,
            always_valid=True,
            better="lower",
        )
    m = max(len(ct["paths"]), 1)
    lo_f, _ = sq.proportion_cs(worst, n, alpha / m)  # fail: any field shown past the limit
    _, hi_p = sq.proportion_cs(worst, n, alpha)  # pass: even the worst field shown within
    state = FAIL if lo_f > limit else PASS if hi_p <= limit else INCONCLUSIVE
    share = worst / n
    path = ct["paths"][0] if ct["paths"] else None
    what = (
        f"{path['change']} {path['path']} in {share:.2%} of {n} pairs"
        if path
        else f"no field differs above the noise share ({n} pairs)"
    )
    why = f"{what}, always-valid interval {_ci_text(float(lo_f), float(hi_p))}"
    return _row(
        "response_contract",
        "schema",
        state,
        share,
        limit,
        why,
        null_hypothesis=nh,
        test=test,
        always_valid=True,
        ci=[float(lo_f), float(hi_p)],
        better="lower",
    )


def _drift_gates(report: dict[str, Any], policy: Policy) -> list[dict[str, Any]]:
    g = policy.guardrails
    out: list[dict[str, Any]] = []
    div = report["divergence"]
    if g.max_psi is not None:
        nh = "prediction PSI (challenger vs champion, same requests) at most the limit"
        need = 10 * policy.divergence.psi_bins
        if div["kind"] != "score":
            state, why, val = NOT_APPLICABLE, f"no PSI for {div['kind']} predictions", None
        elif report["counts"]["mirrored_pairs"] == 0:
            state, why, val = NOT_APPLICABLE, NO_PAIRS, None
        elif div.get("sample", {}).get("n", 0) < need or div.get("psi") is None:
            n_s = div.get("sample", {}).get("n", 0)
            state, why, val = NOT_ENOUGH_DATA, f"{n_s} score pairs (PSI needs {need})", None
        else:
            val = div["psi"]
            state = FAIL if val > g.max_psi else PASS
            why = f"challenger vs champion predictions on the same requests: PSI {val:.4g}"
        out.append(
            _row(
                "prediction_psi",
                "drift",
                state,
                val,
                g.max_psi,
                why,
                null_hypothesis=nh,
                test=NO_TEST,
                always_valid=False,
                tested=False,
            )
        )
    if g.max_input_psi is not None:
        drift = report["drift"]
        nh = "largest PSI of a captured input field vs the reference at most the limit"
        val = drift.get("max_psi")
        if drift.get("state") != "ok":
            state, why = NOT_APPLICABLE, "no reference for input drift"
        elif val is None:
            state, why = NOT_ENOUGH_DATA, "no captured input field matches the reference"
        else:
            state = FAIL if val > g.max_input_psi else PASS
            why = f"largest PSI of a captured input field vs reference: {val:.4g}"
        out.append(
            _row(
                "input_psi",
                "drift",
                state,
                val,
                g.max_input_psi,
                why,
                null_hypothesis=nh,
                test=NO_TEST,
                always_valid=False,
                tested=False,
            )
        )
    return out


def _fairness_gates(report: dict[str, Any], policy: Policy) -> list[dict[str, Any]]:
    g = policy.guardrails
    seg = report["segments"]
    out: list[dict[str, Any]] = []
    no_fields = not seg["fields"]
    if g.max_segment_gap is not None:
        gap = seg["gap"]
        val = gap.get("value")
        nh = "no segment's figure differs from the overall by more than the limit"
        if no_fields:
            state, why = NOT_APPLICABLE, "no segment fields recorded"
        elif val is None:
            state, why = NOT_ENOUGH_DATA, gap.get("reason", "not enough data")
        else:
            state = FAIL if val > g.max_segment_gap else PASS
            why = (
                f"{gap['metric']}: {gap.get('segment')} {_fmt(gap.get('segment_value'))} vs "
                f"overall {_fmt(gap.get('overall'))}"
            )
        out.append(
            _row(
                "segment_gap",
                "fairness",
                state,
                val,
                g.max_segment_gap,
                why,
                null_hypothesis=nh,
                test=NO_TEST,
                always_valid=False,
                tested=False,
            )
        )
    if g.min_disparity_ratio is not None:
        dr = seg["disparity"]
        val = dr.get("value")
        nh = "lowest / highest positive-decision rate of the segments at least the limit"
        if no_fields:
            state, why = NOT_APPLICABLE, "no segment fields recorded"
        elif val is None:
            state, why = NOT_ENOUGH_DATA, dr.get("reason", "not enough data")
        else:
            state = FAIL if val < g.min_disparity_ratio else PASS
            why = (
                f"{dr['field']}: {dr['lowest']['value']} {_fmt(dr['lowest']['rate'])} vs "
                f"{dr['highest']['value']} {_fmt(dr['highest']['rate'])}"
            )
        out.append(
            _row(
                "disparity_ratio",
                "fairness",
                state,
                val,
                g.min_disparity_ratio,
                why,
                null_hypothesis=nh,
                test=NO_TEST,
                always_valid=False,
                tested=False,
            )
        )
    return out


def _primary(report: dict[str, Any], policy: Policy, live: bool) -> dict[str, Any]:
    pm = policy.primary_metric
    assert pm is not None
    spec = policy.metrics.get(pm.name)
    sign = 1 if spec is None or spec.higher_is_better else -1
    unit = " (relative)" if pm.relative else ""
    nh = (
        f"{pm.name}'s uplift{unit} is at most {pm.min_uplift:g} (promote rejects it); "
        "its uplift is at least 0 (rollback rejects it)"
    )
    test = CS_NORMAL + (" on the relative uplift (delta method)" if pm.relative else "")
    m = report["metrics"].get(pm.name)

    def row(state: str, value: Any, reason: str, ci: Any = None) -> dict[str, Any]:
        r = _row(
            "primary_metric",
            "primary",
            state,
            value,
            pm.min_uplift,
            reason,
            null_hypothesis=nh,
            test=test,
            always_valid=True,
            ci=ci,
            better="higher",
            p_value=m["uplift"]["sequential_p_value"] if m is not None else None,
        )
        r["eta_s"] = m.get("eta_s") if m is not None else None
        return r

    if not live:
        return row(
            NOT_APPLICABLE, None, "no live split: the primary metric is judged in the canary steps"
        )
    if m is None:
        return row(NOT_ENOUGH_DATA, None, f"no outcomes for metric {pm.name!r} yet")
    up = m["uplift"]
    lo, hi = up["relative_sequential_ci"] if pm.relative else up["sequential_ci"]
    if up["state"] == "not_enough_data":
        return row(NOT_ENOUGH_DATA, None, f"{pm.name}: fewer than 2 units in an arm")
    if lo is None or hi is None:
        why = {
            "zero_variance": "no variance in either arm (every value equal): no test",
            "control_mean_zero": "the champion's mean is 0: no relative uplift",
        }.get(up.get("relative_state") if pm.relative else up["state"], up["state"])
        return row(NOT_EVALUABLE, None, f"{pm.name}: {why}")
    low, high = (lo, hi) if sign > 0 else (-hi, -lo)
    state = _state(primary_state(low, high, pm.min_uplift))
    why = (
        f"{pm.name}: always-valid interval {_ci_text(low, high)}{unit}, needs lower bound > "
        f"{pm.min_uplift:g}" + ("; harmful: the whole interval is below 0" if state == FAIL else "")
    )
    return row(state, low, why, [low, high])


# ------------------------------------------------------------------------------ decision
def decide(
    gates: list[dict[str, Any]], report: dict[str, Any], policy: Policy | None = None
) -> dict[str, Any]:
    """Rollback > hold > continue (waiting on evidence) > promote (see the module docstring)."""
    del policy  # the rows carry their thresholds
    warnings = [f"warning: {g['name']}: {g['reason']}" for g in gates if g["state"] == WARN]
    if report["counts"]["records"] == 0:
        return empty_window_decision(report)
    failed = [g for g in gates if g["state"] == FAIL]
    rollback = [g for g in failed if g["kind"] in ROLLBACK_KINDS]
    if rollback:
        return {
            "action": "rollback",
            "reasons": [f"{g['name']} significantly worse: {g['reason']}" for g in rollback]
            + warnings,
        }
    if failed:
        return {
            "action": "hold",
            "reasons": [f"{g['name']} failed: {g['reason']}" for g in failed] + warnings,
        }
    reasons = []
    sample = next((g for g in gates if g["name"] == "min_samples"), None)
    if sample is not None and sample["state"] != PASS:
        reasons.append(f"not enough data: {sample['reason']}")
    for g in gates:
        if g["state"] in WAITING and g is not sample:
            what = {
                INCONCLUSIVE: "not yet conclusive",
                NOT_ENOUGH_DATA: "not enough data",
                NOT_EVALUABLE: "cannot be evaluated",
            }[g["state"]]
            reasons.append(f"{g['name']} {what}: {g['reason']}")
    if reasons:
        eta = next((g.get("eta_s") for g in gates if g["name"] == "primary_metric"), None)
        if eta is not None:
            reasons.append(f"estimated time to the primary metric's sample size: {eta:.0f} s")
        return {"action": "continue", "reasons": reasons + warnings}
    why = ["all gates pass"]
    primary = next((g for g in gates if g["name"] == "primary_metric"), None)
    if primary is not None and primary["state"] == PASS:
        why.append(f"primary metric cleared: {primary['reason']}")
    elif primary is not None:
        why.append("shadow evidence only: no live split in this window")
    return {"action": "promote", "reasons": why + warnings}


# ------------------------------------------------------------------------------ running state
def apply_running(
    report: dict[str, Any], prior: dict[str, Any] | None
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """Intersect each always-valid gate's interval with the same gate's intervals at earlier
    looks of the same step, and keep the running minimum of its always-valid p-value (``prior``:
    what this returned last time, or None); re-derive the states and the decision. Returns
    ``(gates, decision, running)``; the caller (the promotion controller) stores ``running`` for
    its next look. The intersection of a confidence sequence is a confidence sequence, and the
    running minimum of an always-valid p-value is one too (both rest on the same event of
    Ville's inequality), so the guarantees are unchanged and the states only tighten."""
    prior = prior or {}
    out: list[dict[str, Any]] = []
    running: dict[str, Any] = {}
    for g in report["gates"]:
        g = dict(g)
        name = g["name"]
        if not g.get("always_valid") or g["state"] not in (PASS, FAIL, INCONCLUSIVE):
            out.append(g)
            continue
        before = prior.get(name) or {}
        ci = g.get("ci")
        b_ci = before.get("ci") or [None, None]
        looks = int(before.get("looks", 0)) + 1
        cur = sq.Running(b_ci[0], b_ci[1], before.get("p_value"), looks - 1)
        lo_now, hi_now = (ci[0], ci[1]) if ci is not None else (None, None)
        cur = cur.update(lo_now, hi_now, g.get("p_value"))
        running[name] = {"ci": [cur.low, cur.high] if ci is not None else None,
                         "p_value": cur.pvalue, "looks": looks}  # fmt: skip
        changed = False
        if ci is not None and [cur.low, cur.high] != list(ci):
            g["ci"] = [cur.low, cur.high]
            changed = True
            thr = g["threshold"]
            if g["kind"] == "primary":
                g["state"] = _state(primary_state(cur.low, cur.high, float(thr)))
            elif thr is not None and g.get("better") in ("lower", "higher"):
                g["state"] = _state(interval_state(cur.low, cur.high, float(thr), str(g["better"])))
        if cur.pvalue is not None and cur.pvalue != g.get("p_value"):
            g["p_value"] = cur.pvalue
            changed = True
            srm = report.get("srm") or {}
            if (
                g["kind"] == "srm"
                and cur.pvalue < float(g["threshold"])
                and (srm.get("max_share_diff") or 0.0) > (srm.get("min_share_diff") or 0.0)
            ):
                g["state"] = FAIL
        if changed:
            g["passed"] = g["state"] in (PASS, NOT_APPLICABLE)
            g["significant"] = g["state"] == FAIL
            g["reason"] += (
                f"; over {looks} looks of this step: "
                + (
                    f"intersected interval {_ci_text(cur.low, cur.high)}, "
                    if ci is not None
                    else ""
                )
                + f"smallest always-valid p {_fmt(cur.pvalue)}"
            )
        out.append(g)
    return out, decide(out, report), running
