"""Always-valid inference: confidence sequences as pure, vectorised functions of summaries.

A confidence sequence ``C_t`` covers its parameter at *every* sample size at once:
``P(θ ∈ C_t for all t) ≥ 1 − α``. A gate that is re-checked at every look (the promotion
controller re-analyses a step every ``analysis_interval_s`` and checks its fast guardrails every
``check_interval_s``) therefore keeps its error rate at α however often it looks, and the
running intersection of the sequence (and the running minimum of its p-value) is valid too.

Every sequence here comes from a nonnegative (super)martingale ``M_t`` under the null and
Ville's inequality ``P(∃t: M_t ≥ 1/α) ≤ α``; each is a function of sufficient statistics only,
so it can be computed from mergeable aggregates (no per-record order):

* :func:`binomial_log_mixture`: the conjugate beta-binomial mixture of Bernoulli(p₀) likelihood
  ratios (Robbins 1970; Howard et al. 2021, "Time-uniform, nonparametric, nonasymptotic
  confidence sequences", Ann. Statist. 49(2), section 3). Exact for Bernoulli data, and a
  supermartingale for any [0, 1]-valued data ("sub-Bernoulli"). Used for the sample-ratio test,
  for quantiles (the count of observations below the true quantile is binomial) and for a
  single proportion.
* :func:`bounded_mean_cs`: the gamma-exponential mixture of the self-normalised process of Fan
  et al. (2015) for variables bounded below (Howard et al. 2021, Proposition 9), with variance
  process ``Σ (X_i − μ)²``: exact at any sample size, and as narrow as an empirical-Bernstein
  bound when the variance is small (rare errors). Used for paired differences of error and
  accuracy indicators (values in [−1, 1]).
* :func:`router.analysis.stats.msprt` (normal mixture, asymptotic) for means and
  delta-method ratios, where the central limit theorem is the model anyway.

Tuning: the mixtures spread their prior over alternatives with the policy's ``sequential.tau``
(in standard deviations of one observation; default 0.1), i.e. a prior "precision" of
``1/τ² = 100`` observations, which puts the tightest point of the boundaries at a few hundred
observations. :func:`bounded_mean_cs` does not know the variance in advance and mixes
uniformly over ``ρ ∈ {1, 10, 100, 1000}`` instead.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import special as sp

Array = np.ndarray
DEFAULT_TAU = 0.1
BOUNDED_RHOS = (1.0, 10.0, 100.0, 1000.0)
_BISECT = 48  # halvings: interval bounds to ~4e-15 of the search range


def concentration(tau: float) -> float:
    """The beta prior's ``a + b`` for a mixture spread of ``tau`` standard deviations of one
    observation: ``Var(p) = p₀(1 − p₀) / (a + b + 1) = τ² p₀(1 − p₀)``."""
    return max(1.0 / (tau * tau) - 1.0, 1e-3)


def binomial_log_mixture(
    k: Array | float, n: Array | float, p0: Array | float, a: Array | float, b: Array | float
) -> Array:
    """log of ``∫ L(p) / L(p₀) dBeta(p; a, b)`` after ``k`` successes in ``n`` trials:
    ``log B(a + k, b + n − k) − log B(a, b) − k log p₀ − (n − k) log(1 − p₀)``.

    ``k`` may be real (sub-Bernoulli data in [0, 1] summed). A nonnegative martingale with
    expectation 1 under i.i.d. Bernoulli(p₀); reject p₀ once it reaches ``1/α``."""
    k, n, p0 = np.asarray(k, float), np.asarray(n, float), np.asarray(p0, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = (
            sp.betaln(a + k, b + n - k) - sp.betaln(a, b) - sp.xlogy(k, p0) - sp.xlog1py(n - k, -p0)
        )
    return np.asarray(out, float)


def binomial_ranks(
    n: Array | int, p0: float, alpha: float, tau: float = DEFAULT_TAU
) -> tuple[Array, Array]:
    """The time-uniform acceptance region ``{k : log M_n(k) < log(1/α)}`` of a Bernoulli(p₀)
    count after ``n`` trials, as ``(k_lo, k_hi)`` (vectorised over ``n``), with the beta prior
    centred on ``p₀`` (concentration from ``tau``).

    ``log M`` is convex in ``k`` (log-beta is convex), so the region is an interval around
    ``n p₀``, found by bisection on each side."""
    n = np.asarray(n, dtype=np.int64)
    r = concentration(tau)
    a, b = r * p0, r * (1.0 - p0)
    thr = math.log(1.0 / alpha)
    centre = np.clip(np.floor(n * p0), 0, n).astype(np.int64)

    def logm(k: Array) -> Array:
        return binomial_log_mixture(k, n, p0, a, b)

    # lowest accepted k: bisection on [0, centre] for the first k with logm(k) < thr
    lo, hi = np.zeros_like(n), centre.copy()
    ok0 = logm(lo) < thr
    for _ in range(64):
        mid = (lo + hi) // 2
        rej = logm(mid) >= thr
        lo = np.where(rej, mid + 1, lo)
        hi = np.where(rej, hi, mid)
        if np.all(lo >= hi):
            break
    k_lo = np.where(ok0, 0, lo)
    # highest accepted k: bisection on [centre, n]
    lo, hi = centre.copy(), n.copy()
    okn = logm(n) < thr
    for _ in range(64):
        mid = (lo + hi + 1) // 2
        rej = logm(mid) >= thr
        hi = np.where(rej, mid - 1, hi)
        lo = np.where(rej, lo, mid)
        if np.all(lo >= hi):
            break
    k_hi = np.where(okn, n, lo)
    return k_lo, k_hi


def quantile_cs_ranks(
    n: Array | int, q: float, alpha: float, tau: float = DEFAULT_TAU
) -> tuple[Array, Array]:
    """1-based order-statistic ranks ``(r_lo, r_hi)`` of an always-valid interval
    ``[X_(r_lo), X_(r_hi)]`` for the ``q`` quantile after ``n`` observations (any continuous
    distribution; Howard & Ramdas 2022, "Sequential estimation of quantiles", Theorem 1 with the
    beta-binomial boundary). The count of observations at or below the true quantile is a
    Bernoulli(q) sum, so the interval fails only when that count leaves its region.

    ``r_lo = 0`` means no lower bound yet, ``r_hi = n + 1`` no upper bound yet (not enough
    data for that side)."""
    k_lo, k_hi = binomial_ranks(n, q, alpha, tau)
    return k_lo, k_hi + 1


@functools.lru_cache(maxsize=64)
def quantile_cs_min_n(q: float, alpha: float, tau: float = DEFAULT_TAU) -> int:
    """The smallest n at which :func:`quantile_cs_ranks` has an upper bound (``r_hi <= n``)."""
    hi = 16
    while int(quantile_cs_ranks(hi, q, alpha, tau)[1]) > hi:
        hi *= 2
        if hi > 1 << 40:
            return hi
    lo = hi // 2
    while lo < hi:  # the first n with an upper bound (monotone in n)
        mid = (lo + hi) // 2
        if int(quantile_cs_ranks(mid, q, alpha, tau)[1]) <= mid:
            hi = mid
        else:
            lo = mid + 1
    return lo


def proportion_cs(x: Array | float, n: Array | float, alpha: float) -> tuple[Array, Array]:
    """Always-valid interval for a proportion after ``x`` successes in ``n`` trials: the
    beta-binomial mixture with the fixed Jeffreys prior Beta(1/2, 1/2),
    ``{p : p^x (1 − p)^(n − x) > α B(x + ½, n − x + ½) / B(½, ½)}`` (Robbins 1970). Valid at
    any sample size, one count included; ``n = 0`` gives [0, 1]."""
    x, n = np.asarray(x, float), np.asarray(n, float)
    phat = np.where(n > 0, x / np.maximum(n, 1.0), 0.5)
    thr = math.log(1.0 / alpha)

    def rejected(p: Array) -> Array:
        return binomial_log_mixture(x, n, p, 0.5, 0.5) >= thr

    lo = _bisect_side(rejected, np.zeros_like(phat), phat)
    hi = _bisect_side(rejected, np.ones_like(phat), phat)
    return np.where(n > 0, lo, 0.0), np.where(n > 0, hi, 1.0)


def _bisect_side(rejected: Callable[[Array], Array], outer: Array, inner: Array) -> Array:
    """The boundary between a rejected ``outer`` end and the accepted ``inner`` point (the
    estimate), by bisection, on the accepted side; ``outer`` itself when it is accepted."""
    out_ok = ~rejected(outer)
    a, b = outer.copy(), inner.copy()  # a rejected, b accepted
    for _ in range(_BISECT):
        mid = (a + b) / 2
        rej = rejected(mid)
        a = np.where(rej, mid, a)
        b = np.where(rej, b, mid)
    return np.where(out_ok, outer, b)


def _gamma_exp_log_mixture(s: Array, v: Array, c: Array, rho: float) -> Array:
    """log of the gamma-exponential mixture of ``exp(λ S − ψ_E(λ) V)``,
    ``ψ_E(λ) = (−log(1 − cλ) − cλ)/c²``, over ``λ ∈ [0, 1/c)`` (Howard et al. 2021, Prop. 9):
    a nonnegative supermartingale when each increment ``ξ_i`` of ``S`` has mean ≤ 0 and
    ``ξ_i ≥ −c``, with ``V = Σ ξ_i²`` (Fan, Grama and Liu 2015)."""
    c2 = c * c
    a0 = rho / c2
    big_a = (v + rho) / c2
    big_b = (c * s + v + rho) / c2
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        p = sp.gammainc(big_a, np.maximum(big_b, 1e-300))
        out = (
            (c * s + v) / c2
            - big_a * np.log(np.maximum(big_b, 1e-300))
            + sp.gammaln(big_a)
            + np.log(np.maximum(p, 1e-300))
            + a0 * np.log(a0)
            - sp.gammaln(a0)
            - np.log(np.maximum(sp.gammainc(a0, a0), 1e-300))
        )
    # with S ≤ 0 every exp(λS − ψV) ≤ 1, so the mixture is ≤ 1: no evidence against μ
    return np.where(s > 0, out, 0.0)


def _bounded_logm(s: Array, v: Array, c: Array, rhos: tuple[float, ...]) -> Array:
    """log of a uniform mixture over ``rhos`` of :func:`_gamma_exp_log_mixture`."""
    terms = np.stack([_gamma_exp_log_mixture(s, v, c, r) for r in rhos])
    return np.asarray(sp.logsumexp(terms, axis=0) - math.log(len(rhos)), float)


def bounded_mean_reject(
    n: Array | float,
    mean: Array | float,
    m2: Array | float,
    mu: Array | float,
    low: float,
    high: float,
    alpha: float,
    rhos: tuple[float, ...] = BOUNDED_RHOS,
) -> tuple[Array, Array]:
    """Always-valid one-sided tests of a candidate mean ``mu`` for i.i.d. variables in
    ``[low, high]``, from their count, mean and centred sum of squares ``m2 = Σ (X_i − mean)²``
    (vectorised). Returns ``(above, below)``: the mean is shown to be above ``mu`` / below
    ``mu``, each at level α/2 (together: ``mu`` is outside the confidence sequence of
    :func:`bounded_mean_cs`).

    The "above" side uses ``ξ_i = X_i − mu ≥ −(mu − low)``, the "below" side
    ``ξ_i = mu − X_i ≥ −(high − mu)``; each has ``S = Σ ξ_i = ±n(mean − mu)`` and
    ``V = Σ ξ_i² = m2 + n(mean − mu)²``, and rejects once its mixture reaches ``2/α``. Exact
    (no normal approximation) at every sample size. The range bound ``c`` is floored at
    ``1e-3 (high − low)`` (a larger ``c`` is still valid, only more cautious at the edges)."""
    n = np.asarray(n, float)
    mean = np.asarray(mean, float)
    mu = np.asarray(mu, float)
    m2 = np.maximum(np.asarray(m2, float), 0.0)
    thr = math.log(2.0 / alpha)
    floor = 1e-3 * (high - low)
    d = mean - mu
    v = m2 + n * d * d
    above = _bounded_logm(n * d, v, np.maximum(mu - low, floor), rhos) >= thr
    below = _bounded_logm(-n * d, v, np.maximum(high - mu, floor), rhos) >= thr
    empty = n <= 0
    return above & ~empty, below & ~empty


def bounded_mean_cs(
    n: Array | float,
    mean: Array | float,
    m2: Array | float,
    low: float,
    high: float,
    alpha: float,
    rhos: tuple[float, ...] = BOUNDED_RHOS,
) -> tuple[Array, Array]:
    """The always-valid interval of :func:`bounded_mean_reject`: every ``mu`` neither test
    rejects (found by bisection on each side of the mean; ``[low, high]`` when ``n = 0``)."""
    n = np.asarray(n, float)
    mean = np.clip(np.asarray(mean, float), low, high)
    m2 = np.asarray(m2, float)

    def rej_lower_side(mu: Array) -> Array:
        return bounded_mean_reject(n, mean, m2, mu, low, high, alpha, rhos)[0]

    def rej_upper_side(mu: Array) -> Array:
        return bounded_mean_reject(n, mean, m2, mu, low, high, alpha, rhos)[1]

    lo = _bisect_side(rej_lower_side, np.full_like(mean, low), mean)
    hi = _bisect_side(rej_upper_side, np.full_like(mean, high), mean)
    empty = n <= 0
    return np.where(empty, low, lo), np.where(empty, high, hi)


def normal_mixture_ci(
    estimate: Array | float, variance: Array | float, tau: Array | float, alpha: float
) -> tuple[Array, Array, Array]:
    """The mSPRT (Johari et al. 2017, "Peeking at A/B tests") for an estimate approximately
    ``N(θ, variance)``, with a ``N(0, τ²)`` mixture over θ (vectorised): returns the always-valid
    p-value ``min(1, 1/Λ)``, ``Λ = sqrt(V/(V+τ²)) exp(τ² d² / (2V(V+τ²)))``, and the confidence
    sequence ``d ± sqrt(V(V+τ²)/τ² · (log((V+τ²)/V) + 2 log(1/α)))``. Valid under repeated looks
    to the extent the normal approximation of the estimate holds (means, delta-method ratios);
    ``variance ≤ 0`` or ``tau ≤ 0`` gives NaN (the caller reports the degenerate state)."""
    d = np.asarray(estimate, float)
    v = np.asarray(variance, float)
    t2 = np.asarray(tau, float) ** 2
    ok = (v > 0) & (t2 > 0)
    v = np.where(ok, v, 1.0)
    t2 = np.where(ok, t2, 1.0)
    log_lr = 0.5 * np.log(v / (v + t2)) + t2 * d * d / (2 * v * (v + t2))
    p = np.where(log_lr <= 0, 1.0, np.exp(-np.maximum(log_lr, 0.0)))
    half = np.sqrt(v * (v + t2) / t2 * (np.log((v + t2) / v) + 2 * math.log(1 / alpha)))
    nan = np.full(np.shape(p), np.nan)
    return (
        np.where(ok, np.minimum(p, 1.0), nan),
        np.where(ok, d - half, nan),
        np.where(ok, d + half, nan),
    )


def multinomial_log_mixture(counts: Array, shares: Array | list[float], tau: float) -> Array:
    """log of the Dirichlet-multinomial mixture of likelihood ratios against the configured
    ``shares`` (``counts``: ``(..., k)``), with a Dirichlet prior centred on the shares, of
    concentration ``1/τ² − 1`` (Lindon & Malek 2022, "Anytime-valid inference for multinomial
    count data"): the always-valid sample-ratio test, ``p = min(1, exp(−log M))``."""
    x = np.asarray(counts, float)
    sh = np.asarray(shares, float)
    r = concentration(tau)
    total = x.sum(axis=-1)
    return np.asarray(
        sp.gammaln(r)
        - sp.gammaln(r + total)
        + (sp.gammaln(r * sh + x) - sp.gammaln(r * sh) - sp.xlogy(x, sh)).sum(axis=-1),
        float,
    )


@dataclass(frozen=True, slots=True)
class Running:
    """The running state of one always-valid quantity across looks: the intersection of its
    confidence sequence and the minimum of its p-value (both stay valid)."""

    low: float | None
    high: float | None
    pvalue: float | None = None
    looks: int = 0

    def update(self, low: float | None, high: float | None, pvalue: float | None) -> Running:
        lo = _max_opt(self.low, low)
        hi = _min_opt(self.high, high)
        if lo is not None and hi is not None and lo > hi:
            # disjoint: a 1-in-1/α event, or the effect moved during the step; keep this
            # look's interval rather than an empty one (the reason says so)
            lo, hi = low, high
        return Running(lo, hi, _min_opt(self.pvalue, pvalue), self.looks + 1)


def _max_opt(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


def _min_opt(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)
