"""Distribution-free intervals of a quantile from order statistics (pure; the conventions of
:mod:`router.analysis.stats`). The always-valid form is
:func:`router.analysis.sequential.quantile_cs_ranks`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats as st

from router.analysis.stats import NOT_ENOUGH_DATA, OK


@dataclass(frozen=True, slots=True)
class QuantileInterval:
    """1-based order-statistic ranks ``[X_(low), X_(high)]`` of a distribution-free interval of
    a quantile; ``low = 0`` / ``high = n + 1`` when that side does not exist at this n."""

    low: int
    high: int
    n: int
    min_n: int
    state: str = OK


def quantile_min_n(q: float, alpha: float = 0.05) -> int:
    """The smallest n whose two-sided order-statistic interval of the ``q`` quantile has an
    upper rank within the sample: ``1 − q^n ≥ 1 − α/2``, i.e. ``n ≥ log(α/2) / log(q)``
    (72 for p95, 368 for p99 at α = 0.05); the lower rank needs ``n ≥ log(α/2)/log(1 − q)``."""
    need_hi = math.ceil(math.log(alpha / 2) / math.log(q) - 1e-12)
    need_lo = math.ceil(math.log(alpha / 2) / math.log(1 - q) - 1e-12)
    return max(need_hi, need_lo)


def quantile_interval(n: int, q: float, alpha: float = 0.05) -> QuantileInterval:
    """Distribution-free interval of the ``q`` quantile from order statistics with coverage
    ``≥ 1 − α`` (the count of observations below the quantile is Binomial(n, q)): ranks
    ``binom.ppf(α/2)`` and ``binom.ppf(1 − α/2) + 1``. When a rank falls outside ``1..n`` that
    side is missing and the state is ``not_enough_data``: clipping it to the sample's extreme
    would under-cover (0.62 instead of 0.95 for p99 at n = 100)."""
    need = quantile_min_n(q, alpha)
    if n < 1:
        return QuantileInterval(0, n + 1, n, need, NOT_ENOUGH_DATA)
    lo = int(st.binom.ppf(alpha / 2, n, q))
    hi = int(st.binom.ppf(1 - alpha / 2, n, q)) + 1
    state = OK if lo >= 1 and hi <= n else NOT_ENOUGH_DATA
    return QuantileInterval(max(lo, 0), min(hi, n + 1), n, need, state)
