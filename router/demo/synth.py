"""A seeded generator of synthetic records and outcomes in the DESIGN.md formats.

Used by the analyzer's tests and simulations, its throughput benchmark and ``router analyze
--synthetic``. Every knob is explicit, and the same seed always gives the same data.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from router.sidecar.assign import bucket as assign_bucket

COUNTRIES = ("DE", "FR", "US", "BR", "IN")
DEVICES = ("ios", "android", "web")


@dataclass(frozen=True)
class SynthSpec:
    experiment: str = "synth"
    n: int = 10_000
    units: int = 2_000
    zipf_s: float = 1.1
    split: float = 0.5
    mirror: float = 1.0
    salt: str = "synth-salt"
    start: float = 1_790_000_000.0
    rate: float = 200.0  # requests per second (spacing of ts)
    base_conversion: float = 0.10
    conversion_uplift: float = 0.0  # absolute, for units served by the challenger
    label_rate: float = 0.5  # share of mirrored requests that get a label outcome
    challenger_shift: float = 0.0  # added to the challenger's score logit
    challenger_noise: float = 0.3  # noise between the two models' scores
    challenger_error_rate: float = 0.0
    champion_error_rate: float = 0.0
    champion_latency_ms: float = 20.0
    challenger_latency_ms: float = 20.0
    contract_break: float = 0.0  # share of pairs whose challenger lacks a field
    kind: str = "score"
    seed: int = 1


def generate(spec: SynthSpec) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Yield ``(record, outcomes of that record)`` in time order."""
    rng = random.Random(spec.seed)
    weights = [1.0 / ((k + 1) ** spec.zipf_s) for k in range(spec.units)]
    cum = []
    acc = 0.0
    for w in weights:
        acc += w
        cum.append(acc)
    unit_seg: dict[str, dict[str, str]] = {}
    mirror_salt = spec.salt + ":mirror"
    for i in range(spec.n):
        u = rng.choices(range(spec.units), cum_weights=cum)[0]
        unit = f"u{u}"
        b = assign_bucket(spec.salt, unit)
        served = "challenger" if b < spec.split * 10_000 else "champion"
        mirrored = assign_bucket(mirror_salt, unit) < spec.mirror * 10_000
        seg = unit_seg.get(unit)
        if seg is None:
            r2 = random.Random(u * 7919 + spec.seed)
            seg = unit_seg[unit] = {"country": r2.choice(COUNTRIES), "device": r2.choice(DEVICES)}
        x = rng.gauss(0, 1)
        s_ch = 1 / (1 + math.exp(-x))
        y = x + spec.challenger_shift + rng.gauss(0, spec.challenger_noise)
        s_cl = 1 / (1 + math.exp(-y))
        ts = spec.start + i / spec.rate
        rid = f"{spec.seed}-{i:09d}"

        def side(version: str, score: float, err_rate: float, lat: float) -> dict[str, Any]:
            if rng.random() < err_rate:
                return {
                    "version": version,
                    "status": 503,
                    "latency_ms": lat * 0.2,
                    "prediction": None,
                    "error": None,
                }
            pred: Any = round(score, 6)
            if spec.kind == "class":
                pred = "pos" if score >= 0.5 else "neg"
            elif spec.kind == "value":
                pred = round(score * 100, 4)
            elif spec.kind == "vector":
                pred = [round(score, 6), round(1 - score, 6)]
            return {
                "version": version,
                "status": 200,
                "latency_ms": round(rng.lognormvariate(math.log(lat), 0.3), 3),
                "prediction": pred,
                "error": None,
            }

        champ = chall = None
        if served == "champion" or mirrored:
            champ = side("champ-1", s_ch, spec.champion_error_rate, spec.champion_latency_ms)
        if served == "challenger" or mirrored:
            chall = side("chall-2", s_cl, spec.challenger_error_rate, spec.challenger_latency_ms)
        contract = None
        if mirrored and spec.contract_break and rng.random() < spec.contract_break:
            contract = {"missing": ["explanation"], "extra": [], "retyped": []}
        rec = {
            "v": 1,
            "experiment": spec.experiment,
            "request_id": rid,
            "ts": ts,
            "unit": unit,
            "bucket": b,
            "served": served,
            "mirrored": mirrored,
            "segment": seg,
            "champion": champ,
            "challenger": chall,
            "contract": contract,
            "fields": {"age": 20 + (u % 50), "plan": "pro" if u % 3 == 0 else "free"},
        }
        outs: list[dict[str, Any]] = []
        p = spec.base_conversion + (spec.conversion_uplift if served == "challenger" else 0.0)
        if rng.random() < p:  # a conversion is reported; no row means no conversion
            outs.append(
                {
                    "v": 1,
                    "experiment": spec.experiment,
                    "request_id": rid,
                    "unit": unit,
                    "metric": "converted",
                    "value": 1.0,
                    "ts": ts + 60,
                }
            )
        if mirrored and rng.random() < spec.label_rate:
            label = float(rng.random() < s_ch)
            outs.append(
                {
                    "v": 1,
                    "experiment": spec.experiment,
                    "request_id": rid,
                    "unit": None,
                    "metric": "label",
                    "value": label,
                    "ts": ts + 30,
                }
            )
        yield rec, outs


def dataset(spec: SynthSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    records: list[dict[str, Any]] = []
    outcomes: list[dict[str, Any]] = []
    for rec, outs in generate(spec):
        records.append(rec)
        outcomes.extend(outs)
    return records, outcomes
