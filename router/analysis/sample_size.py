"""How much data a test needs (pure, fixed horizon, normal approximation): the minimum detectable
effect at the current sample and the units per arm for a target effect.
"""

from __future__ import annotations

import math

from scipy import stats as st
from scipy.optimize import brentq


def mde(variance_of_diff: float, alpha: float = 0.05, power: float = 0.8) -> float | None:
    """Minimum detectable (absolute) effect at the current sample: ``(z_{1-α/2} + z_power)·SE``
    (normal approximation to the fixed-horizon two-sided test; the sequential interval needs
    more, see the analyst guide)."""
    if not (variance_of_diff > 0):
        return None
    return (float(st.norm.ppf(1 - alpha / 2)) + float(st.norm.ppf(power))) * math.sqrt(
        variance_of_diff
    )


def n_per_arm_proportions(p1: float, p2: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Units per arm to detect ``p1`` vs ``p2`` (two-sided), Cohen's h arcsine effect size
    under the normal approximation (``2·arcsin√p`` is approximately normal with variance
    ``1/n``); equals statsmodels ``NormalIndPower().solve_power(proportion_effectsize(p2, p1))``.
    A fixed-horizon size: an always-valid test needs more (see the analyst guide)."""
    h = abs(2 * math.asin(math.sqrt(p2)) - 2 * math.asin(math.sqrt(p1)))
    if h == 0:
        return math.inf
    za = float(st.norm.ppf(1 - alpha / 2))

    def shortfall(n: float) -> float:  # two-sided power, both tails, as statsmodels solves it
        d = h * math.sqrt(n / 2)
        return float(st.norm.sf(za - d) + st.norm.cdf(-za - d)) - power

    guess = 2 * ((za + float(st.norm.ppf(power))) / h) ** 2
    return float(brentq(shortfall, 1e-6, guess * 2 + 10, xtol=1e-10))


def n_per_arm_means(sd: float, delta: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Units per arm to detect a mean difference ``delta`` with common SD ``sd``, under the
    normal approximation: ``n = 2 (z_{1-α/2} + z_power)² sd² / delta²`` (fixed horizon)."""
    if delta == 0 or sd <= 0:
        return math.inf
    z = float(st.norm.ppf(1 - alpha / 2)) + float(st.norm.ppf(power))
    return 2 * (z * sd / delta) ** 2
