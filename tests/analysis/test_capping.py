"""Capping (winsorization) of heavy-tailed metrics: a fixed cap or a pooled percentile, applied
to every unit's value before the tests (unit and ratio metrics), and stated in the report."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

from router.analysis import build_report, parse_policy
from router.config import ConfigError
from tests.analysis.test_report import strict_json

T0 = time.time() - 3600


def _data(n: int, seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]], np.ndarray]:
    rng = np.random.default_rng(seed)
    side = {"version": "1", "status": 200, "latency_ms": 5.0, "prediction": 0.3, "error": None}
    recs, outs = [], []
    rev = rng.lognormal(1.0, 1.5, n)  # heavy-tailed revenue per unit
    rev[7] = 1e6  # one whale in the champion arm
    for i in range(n):
        v = "challenger" if i % 2 else "champion"
        other = "champion" if v == "challenger" else "challenger"
        recs.append({"v": 1, "experiment": "e", "request_id": f"r{i}", "ts": T0 + i * 0.01,
                     "unit": f"u{i}", "bucket": 0, "served": v, "mirrored": False, "segment": {},
                     v: side, other: None, "contract": None})  # fmt: skip
        outs.append({"v": 1, "experiment": "e", "request_id": f"r{i}", "metric": "revenue",
                     "value": float(rev[i])})  # fmt: skip
        outs.append({"v": 1, "experiment": "e", "request_id": f"r{i}", "metric": "spend",
                     "value": float(rev[i])})  # fmt: skip
    return recs, outs, rev


def test_percentile_cap_tames_a_whale_and_is_stated() -> None:
    recs, outs, rev = _data(4000, 1)
    raw = build_report(recs, outs, experiment="e", policy=parse_policy({}))["metrics"]["revenue"]
    pol = parse_policy(
        {
            "metrics": {
                "revenue": {"cap_percentile": 0.99},
                "spend": {"per": "request", "agg": "sum", "cap": 50.0},
            }
        }
    )
    rep = strict_json(build_report(recs, outs, experiment="e", policy=pol))
    m = rep["metrics"]["revenue"]
    cap = float(np.quantile(rev, 0.99))
    assert m["capping"]["method"] == "pooled percentile" and m["capping"]["percentile"] == 0.99
    assert m["capping"]["cap"] == pytest.approx(cap)
    champ = rev[0::2]
    chall = rev[1::2]
    assert m["capping"]["capped_units"] == {"champion": int((champ > cap).sum()),
                                            "challenger": int((chall > cap).sum())}  # fmt: skip
    assert m["variants"]["champion"]["mean"] == pytest.approx(np.minimum(champ, cap).mean())
    assert m["variants"]["champion"]["variance"] == pytest.approx(
        np.minimum(champ, cap).var(ddof=1)
    )
    # the whale dominated the raw variance; capped, the interval is far narrower
    assert m["uplift"]["ci"][1] - m["uplift"]["ci"][0] < 0.05 * (
        raw["uplift"]["ci"][1] - raw["uplift"]["ci"][0]
    )
    # a ratio metric caps each unit's numerator at the fixed cap
    sp = rep["metrics"]["spend"]
    assert sp["capping"]["method"] == "fixed" and sp["capping"]["cap"] == 50.0
    assert sp["variants"]["challenger"]["mean"] == pytest.approx(np.minimum(chall, 50.0).mean())
    assert "capping" not in raw


def test_cap_options_are_exclusive() -> None:
    with pytest.raises(ConfigError, match="exclusive"):
        parse_policy({"metrics": {"r": {"cap": 10, "cap_percentile": 0.9}}})
    with pytest.raises(ConfigError, match=r"metrics\.r\.cap_percentile"):
        parse_policy({"metrics": {"r": {"cap_percentile": 1.5}}})
