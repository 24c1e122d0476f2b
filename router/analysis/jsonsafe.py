"""JSON-safe numbers: every number in a report is finite or null (NaN and the infinities are not
JSON, and a statistic that cannot be computed says why in a ``state`` field instead)."""

from __future__ import annotations

import math
from typing import Any


def f(x: Any) -> float | None:
    """A JSON-safe float: None for None, NaN and infinities."""
    if x is None:
        return None
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None
