"""CUPED: regression adjustment of a difference of means by a pre-exposure covariate (pure
functions over co-moments; no I/O).

Deng, Xu, Kohavi & Walker (2013), "Improving the sensitivity of online controlled experiments
by utilizing pre-experiment data". Per unit, ``y`` is the metric and ``x`` a covariate fixed
before the unit's first exposure (so independent of the variant). With one slope ``theta``
estimated on the pooled data of both arms, the adjusted arm mean is
``ȳ_i − θ (x̄_i − x̄)`` (``x̄`` the pooled covariate mean) and its per-unit variance
``s²_y − 2 θ s_xy + θ² s²_x``; the difference of adjusted means is unbiased whatever ``θ`` is
(the covariate does not depend on the variant), and its variance is smallest at the ANCOVA
slope used here, ``θ = Σ_arms Σ (x−x̄_i)(y−ȳ_i) / Σ_arms Σ (x−x̄_i)²`` (the pooled within-arm
slope: the coefficient of ``x`` in the OLS fit ``y ~ 1 + variant + x``, so the adjusted
difference equals that fit's variant coefficient exactly). The variance falls by the factor
``1 − ρ²`` (``ρ`` the within-arm correlation of ``x`` and ``y``).

The tests on the adjusted numbers are the unadjusted ones (:func:`router.analysis.stats.welch`
and the mSPRT of :func:`router.analysis.stats.msprt`) fed with the adjusted means and
variances, so the p-value, the fixed-horizon interval and the always-valid interval keep their
rules. The relative uplift divides by the champion's *unadjusted* mean, with the delta-method
variance of GrowthBook's gbstats (``TTest`` over ``RegressionAdjustedStatistic``). Ratio metrics
(``per: request``) are adjusted on their linearisation (Deng et al. 2018): a unit's
``(X − R N) / N̄`` carries the ratio's delta-method variance, and its co-moments with the
covariate give the same formulas (:func:`ratio_comoments`).

Units without a pre-exposure value get a fixed value (0, or the mean for mean metrics) **and a
has-history indicator as a second covariate** (:func:`adjust_with_indicator`; the "missing
indicator" method of regression adjustment): the indicator absorbs the level of the units with
history, so the slope is learnt where there is history and the variance falls by about the
share of units with history times ρ², where the fixed value alone would let the gap between 0
and the history's level swamp the slope. The adjusted difference is then the variant
coefficient of ``y ~ 1 + variant + x + has``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import stats as st

from router.analysis import stats
from router.analysis.sketches import CoMoments

NO_COVARIATE = "no_covariate"  # no unit has a pre-exposure value
COVARIATE_CONSTANT = "covariate_constant"  # every unit has the same covariate: nothing to adjust


@dataclass(frozen=True, slots=True)
class CupedResult:
    """A regression-adjusted difference: ``theta``, the within-arm correlation, the adjusted
    arm means and per-unit variances, the tests on them, and the variance reduction
    ``1 − Var(adjusted difference) / Var(unadjusted difference)``."""

    state: str
    theta: float | None = None
    correlation: float | None = None
    means: tuple[float, float] | None = None
    variances: tuple[float, float] | None = None
    diff: stats.DiffResult | None = None
    relative: stats.RatioResult | None = None
    variance_reduction: float | None = None
    theta_indicator: float | None = None  # the has-history indicator's slope, when used
    method: str = (
        "CUPED (Deng et al. 2013): pooled within-arm OLS slope theta, adjusted means "
        "y_i - theta (x_i - x_pooled), Welch's test on the adjusted values"
    )


def ancova_theta(arms: tuple[CoMoments, CoMoments]) -> float | None:
    """The pooled within-arm slope of ``y`` on ``x`` (None when ``x`` is constant within arms)."""
    sxx = arms[0].cxx + arms[1].cxx
    scale = max(abs(arms[0].mx), abs(arms[1].mx), 1.0) ** 2
    if not sxx > 1e-24 * scale * max(arms[0].n + arms[1].n, 1.0):
        return None
    return (arms[0].cxy + arms[1].cxy) / sxx


def adjust(
    arms: tuple[CoMoments, CoMoments],
    alpha: float = 0.05,
    theta: float | None = None,
) -> CupedResult:
    """Adjust the difference ``arm 1 − arm 0`` of the ``y`` means by the covariate ``x``.
    ``arms`` hold per-unit co-moments ``(x, y)``; ``theta`` defaults to :func:`ancova_theta`
    (pass gbstats' pooled-total theta to reproduce its numbers)."""
    a, b = arms
    if a.n < 2 or b.n < 2:
        return CupedResult(stats.NOT_ENOUGH_DATA)
    if theta is None:
        theta = ancova_theta(arms)
        if theta is None:
            return CupedResult(COVARIATE_CONSTANT)
    xbar = (a.n * a.mx + b.n * b.mx) / (a.n + b.n)
    means = tuple(m.my - theta * (m.mx - xbar) for m in arms)
    var = tuple(
        max((m.cyy - 2 * theta * m.cxy + theta * theta * m.cxx) / (m.n - 1), 0.0) for m in arms
    )
    w = stats.welch(means[0], var[0], a.n, means[1], var[1], b.n, alpha)
    rel = relative(a, b, means, var, alpha)
    vy = (a.cyy / (a.n - 1)) / a.n + (b.cyy / (b.n - 1)) / b.n
    vadj = var[0] / a.n + var[1] / b.n
    sxx, syy = a.cxx + b.cxx, a.cyy + b.cyy
    rho = (a.cxy + b.cxy) / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else None
    return CupedResult(
        state=w.state,
        theta=theta,
        correlation=rho,
        means=(float(means[0]), float(means[1])),
        variances=(float(var[0]), float(var[1])),
        diff=w,
        relative=rel,
        variance_reduction=1.0 - vadj / vy if vy > 0 else None,
    )


def relative(
    a: CoMoments,
    b: CoMoments,
    means: tuple[float, ...],
    var: tuple[float, ...],
    alpha: float = 0.05,
) -> stats.RatioResult:
    """``(ȳ_1,adj − ȳ_0,adj) / ȳ_0`` with gbstats' delta-method variance
    ``v_1/(n_1 ȳ_0²) + v_0 ȳ_1²/(n_0 ȳ_0⁴)`` (adjusted variances, unadjusted means)."""
    m0, m1 = a.my, b.my
    if m0 == 0:
        return stats.RatioResult(None, stats.Interval(None, None), state=stats.CONTROL_MEAN_ZERO)
    r = (means[1] - means[0]) / m0
    v = var[1] / (b.n * m0**2) + var[0] * m1**2 / (a.n * m0**4)
    if not v > 0:
        return stats.RatioResult(r, stats.Interval(None, None), state=stats.ZERO_VARIANCE,
                                 variance=0.0)  # fmt: skip
    h = float(st.norm.ppf(1 - alpha / 2)) * math.sqrt(v)
    method = "delta method on the CUPED-adjusted means over the unadjusted control mean (gbstats)"
    return stats.RatioResult(r, stats.Interval(r - h, r + h), method=method, variance=v)


def ratio_comoments(
    c: np.ndarray,
    x: np.ndarray,
    n: np.ndarray,
    solo: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> CoMoments:
    """Co-moments of ``(covariate, linearised ratio)`` over the clusters of one arm of a ratio
    metric ``R = ΣX / ΣN``: the ``y`` side has mean ``R`` and centred sums of
    ``(X − R N) / N̄`` (so ``cyy / (k − 1)`` is the per-cluster delta-method variance of
    :func:`router.analysis.stats.ratio_variance`). ``c, x, n`` are per unit cluster; ``solo`` is
    ``(count, mean, centred sum of squares)`` of the clusters of one request without a unit
    (``N = 1``, no history: covariate 0)."""
    ks, mu_s, m2_s = solo
    k = float(c.size) + ks
    if k <= 0:
        return CoMoments()
    sx = float(x.sum()) + ks * mu_s
    sn = float(n.sum()) + ks
    sc = float(c.sum())
    xb, nb, cb = sx / k, sn / k, sc / k
    if nb <= 0:
        return CoMoments()
    r = sx / sn
    dx, dn, dc = x - xb, n - nb, c - cb
    cxx_ = float((dx * dx).sum()) + m2_s + ks * (mu_s - xb) ** 2
    cnn = float((dn * dn).sum()) + ks * (1.0 - nb) ** 2
    cxn = float((dx * dn).sum()) + ks * (mu_s - xb) * (1.0 - nb)
    ccc = float((dc * dc).sum()) + ks * cb * cb
    cxc = float((dx * dc).sum()) + ks * (mu_s - xb) * (-cb)
    cnc = float((dn * dc).sum()) + ks * (1.0 - nb) * (-cb)
    cll = max(cxx_ - 2 * r * cxn + r * r * cnn, 0.0) / nb**2
    clc = (cxc - r * cnc) / nb
    return CoMoments(k, cb, r, ccc, cll, clc)


Arms = tuple[CoMoments, CoMoments]
INDICATOR_METHOD = (
    "CUPED (Deng et al. 2013) with a has-history indicator: pooled within-arm OLS slopes of the "
    "covariate and of the indicator, adjusted means y_i - theta.(z_i - z_pooled), Welch's test "
    "on the adjusted values"
)


def adjust_with_indicator(
    comoments: Callable[[np.ndarray], Arms],
    c: np.ndarray,
    has: np.ndarray,
    alpha: float = 0.05,
) -> CupedResult:
    """CUPED with the covariate ``c`` (per unit, a fixed value where ``has`` is false) and the
    indicator ``has`` as a second covariate. ``comoments(z)`` gives each arm's co-moments of a
    per-unit covariate ``z`` (aligned with ``c``) and the metric (or its linearisation). The
    two slopes solve the pooled within-arm normal equations
    ``[[Scc, Sch], [Sch, Shh]] θ = [Scy, Shy]`` (``Sch`` from the co-moments of ``c + h``:
    ``(S(c+h) − Scc − Shh) / 2``); the adjustment is then the one-covariate one on the
    composite ``θ_c c + θ_h h`` with slope 1, whose correlation is the multiple correlation.
    When every unit or none has history, the indicator is constant: :func:`adjust` on ``c``."""
    h = np.asarray(has, dtype=float)
    if h.size == 0 or h.min() == h.max():
        return adjust(comoments(c), alpha)
    a, b, ab = comoments(c), comoments(h), comoments(c + h)
    scc = a[0].cxx + a[1].cxx
    shh = b[0].cxx + b[1].cxx
    sch = (ab[0].cxx + ab[1].cxx - scc - shh) / 2.0
    scy = a[0].cxy + a[1].cxy
    shy = b[0].cxy + b[1].cxy
    n = a[0].n + a[1].n
    if a[0].n < 2 or a[1].n < 2:
        return CupedResult(stats.NOT_ENOUGH_DATA)
    scale = max(abs(a[0].mx), abs(a[1].mx), 1.0) ** 2
    det = scc * shh - sch * sch
    if not shh > 1e-24 * max(n, 1.0):  # the indicator is constant within arms
        return adjust(a, alpha)
    if not det > 1e-12 * max(scc * shh, 1e-300) or not scc > 1e-24 * scale * max(n, 1.0):
        # c carries nothing beyond the indicator (e.g. constant where present)
        th_c, th_h = 0.0, shy / shh
    else:
        th_c = (shh * scy - sch * shy) / det
        th_h = (scc * shy - sch * scy) / det
    if th_c == 0.0 and th_h == 0.0:
        return CupedResult(COVARIATE_CONSTANT)
    res = adjust(comoments(th_c * np.asarray(c, dtype=float) + th_h * h), alpha, theta=1.0)
    return dataclasses.replace(res, theta=th_c, theta_indicator=th_h, method=INDICATOR_METHOD)
