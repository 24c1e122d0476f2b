"""Drift tests chosen by sample size (Evidently's rule): KS / chi-square for small references,
Wasserstein / Jensen-Shannon with thresholds for large ones, checked against scipy, on binned
data, and in the report's drift section and gate."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as st
from scipy.spatial.distance import jensenshannon

from router.analysis import Policy, parse_policy
from router.analysis.drift_tests import DriftRules, categorical, numeric_binned, numeric_samples
from router.analysis.report import report_from
from router.analysis.sections.drift import reference_stats
from router.demo.synth import SynthSpec, dataset
from tests.analysis.test_report import _acc

RULES = DriftRules()


def test_small_samples_use_ks_and_large_use_wasserstein() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 1, 800), rng.normal(0.3, 1, 900)
    t = numeric_samples(a, b, RULES)
    ref = st.ks_2samp(a, b)
    assert t.method == "ks" and t.statistic == pytest.approx(ref.statistic)
    assert t.p_value == pytest.approx(ref.pvalue) and t.drift is True
    a, b = rng.normal(0, 2, 5000), rng.normal(0.5, 2, 5000)
    t = numeric_samples(a, b, RULES)
    assert t.method == "wasserstein"
    assert t.statistic == pytest.approx(st.wasserstein_distance(a, b) / np.std(a))
    assert t.drift is True  # 0.5 / 2 = 0.25 SD


def test_from_statistics_equals_numeric_samples() -> None:
    from router.analysis.drift_tests import from_statistics

    rng = np.random.default_rng(6)
    for n in (500, 5000):
        a, b = rng.normal(0, 1, n), rng.normal(0.2, 1, n)
        ks = st.ks_2samp(a, b)
        wn = st.wasserstein_distance(a, b) / np.std(a)
        got = from_statistics(n, n, float(ks.statistic), float(ks.pvalue), wn, RULES)
        assert got == numeric_samples(a, b, RULES)


def test_a_trivial_shift_in_a_huge_sample_is_not_drift() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.normal(0, 1, 200_000), rng.normal(0.02, 1, 200_000)
    assert st.ks_2samp(a, b).pvalue < 1e-6  # a test alone would flag it
    t = numeric_samples(a, b, RULES)
    assert t.method == "wasserstein" and t.statistic < 0.05 and t.drift is False


def test_binned_equals_exact_when_bins_are_the_values() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.integers(0, 20, 600), rng.integers(2, 22, 700)
    vals = np.arange(0, 22)
    ra, rb = np.bincount(a, minlength=22), np.bincount(b, minlength=22)
    t = numeric_binned(vals.astype(float), ra.astype(float), rb.astype(float), RULES)
    assert t.statistic == pytest.approx(st.ks_2samp(a, b).statistic)
    big = DriftRules(small_n=10)
    t = numeric_binned(vals.astype(float), ra.astype(float), rb.astype(float), big)
    assert t.statistic == pytest.approx(st.wasserstein_distance(a, b) / np.std(a))


def test_categorical_chi_square_then_jensen_shannon() -> None:
    r, c = np.array([300.0, 200, 100]), np.array([250.0, 250, 150])
    t = categorical(r, c, RULES)
    ref = st.chi2_contingency(np.vstack([r, c]), correction=False)
    assert t.method == "chi_square" and t.p_value == pytest.approx(ref.pvalue)
    t = categorical(r * 10, c * 10, RULES)
    assert t.method == "jensen_shannon"
    assert t.statistic == pytest.approx(jensenshannon(r, c))


def test_report_drift_section_and_gate() -> None:
    recs, outs = dataset(SynthSpec(n=3000, seed=15))
    ref = reference_stats(_acc(recs, outs, Policy()))
    pol = parse_policy({"guardrails": {"max_drifted_share": 0.4}})
    same = report_from(_acc(recs, outs, pol), experiment="synth", reference=ref)
    d = same["drift"]
    assert d["fields"]["age"]["test"]["method"] == "wasserstein"  # 3000 reference values
    assert d["drifted_fields"] == [] and d["drifted_share"] == 0.0
    assert next(g for g in same["gates"] if g["name"] == "input_drift")["state"] == "pass"
    shifted = [dict(r, fields={"age": r["fields"]["age"] + 15, "plan": "pro"}) for r in recs]
    drift = report_from(_acc(shifted, outs, pol), experiment="synth", reference=ref)
    assert sorted(drift["drift"]["drifted_fields"]) == ["age", "plan"]
    g = next(g for g in drift["gates"] if g["name"] == "input_drift")
    assert g["state"] == "fail" and "age" in g["reason"]
    # an older reference file (deciles only) is tested on its bins
    old = {"fields": {k: {kk: vv for kk, vv in v.items() if kk != "fine"}
                      for k, v in ref["fields"].items()}}  # fmt: skip
    r2 = report_from(_acc(shifted, outs, pol), experiment="synth", reference=old)
    assert r2["drift"]["fields"]["age"]["test"]["drift"] is True
    # the prediction divergence carries its size-chosen test too (champion as reference)
    assert same["divergence"]["drift_test"]["method"] in ("ks", "wasserstein")
