"""Text predictions of mirrored pairs reduced to mergeable aggregates, and their report part.

For ``prediction_kind: text`` (e.g. the reassembled answer of an OpenAI-compatible model) each
mirrored pair where both sides answered adds:

* exact match (the strings equal), normalised similarity (``rapidfuzz.fuzz.ratio``: the
  Indel similarity, 1 − Indel distance / total length, as ``difflib.SequenceMatcher.ratio``
  defines it for the same alignment; and ``token_set_ratio``, insensitive to word order and
  repetition), both on 0-1, as moments (mean with a t interval) and 20-bin histograms
  (quantiles);
* the length ratio (challenger / champion, characters), as moments of its logarithm (the
  geometric mean ratio and its interval);
* empty and refusal flips in both directions (a refusal: the text matches one of the policy's
  ``divergence.refusal_patterns``, case-insensitive regular expressions);
* latency as paired differences of time to first token (``ttfb_ms``) and of tokens per second
  (``usage.completion_tokens``, else the event count, over the time after the first token);
* the ``examples`` most different pairs (lowest ratio), with each text cut to ``example_chars``
  (or, with ``example_mode``, only a SHA-256 prefix of it, or nothing).

Everything merges (sums, moments, histograms, a bounded list of examples), so the section is the
same whether the records were folded in one pass or in shards.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rapidfuzz import fuzz

from router.analysis.jsonsafe import f
from router.analysis.policy import DEFAULT_REFUSALS
from router.analysis.sketches import Moments

BINS = 20


@dataclass
class TextPair:
    """One pair's text facts, as read from the records."""

    champion: str
    challenger: str
    c_ttft_ms: float | None = None
    h_ttft_ms: float | None = None
    c_duration_ms: float | None = None
    h_duration_ms: float | None = None
    c_tokens: float | None = None
    h_tokens: float | None = None
    key: int = 0  # a stable hash of the request id (ties among examples)


def tokens_per_second(tokens: float | None, ttft: float | None, dur: float | None) -> float | None:
    """Generation speed after the first token: ``tokens / (duration - ttft)``."""
    if tokens is None or ttft is None or dur is None or tokens <= 0:
        return None
    gen = (dur - ttft) / 1000.0
    return tokens / gen if gen > 0 else None


@dataclass
class TextAggregates:
    example_count: int = 5
    example_chars: int = 200
    patterns: tuple[str, ...] = DEFAULT_REFUSALS
    example_mode: str = "text"  # text | hash | omit
    n: int = 0
    exact: int = 0
    ratio: Moments = field(default_factory=Moments)
    token_set: Moments = field(default_factory=Moments)
    ratio_hist: np.ndarray = field(default_factory=lambda: np.zeros(BINS, dtype=np.int64))
    token_set_hist: np.ndarray = field(default_factory=lambda: np.zeros(BINS, dtype=np.int64))
    log_length_ratio: Moments = field(default_factory=Moments)
    flips: dict[str, int] = field(
        default_factory=lambda: {"empty_to_text": 0, "text_to_empty": 0,
                                 "refusal_added": 0, "refusal_removed": 0}
    )  # fmt: skip
    refusals: list[int] = field(default_factory=lambda: [0, 0])
    empties: list[int] = field(default_factory=lambda: [0, 0])
    ttft: list[Moments] = field(default_factory=lambda: [Moments(), Moments()])
    ttft_diff: Moments = field(default_factory=Moments)
    tps: list[Moments] = field(default_factory=lambda: [Moments(), Moments()])
    tps_diff: Moments = field(default_factory=Moments)
    examples: list[tuple[float, int, str, str]] = field(default_factory=list)  # max-heap by -r

    def __post_init__(self) -> None:
        self._refusal = re.compile("|".join(f"(?:{p})" for p in self.patterns), re.IGNORECASE)

    def is_refusal(self, text: str) -> bool:
        return bool(self.patterns) and self._refusal.search(text) is not None

    def add(self, p: TextPair) -> tuple[bool, float]:
        """Fold one pair; returns (exact match, ratio) for the segment tables."""
        a, b = p.champion, p.challenger
        self.n += 1
        same = a == b
        self.exact += same
        r = 1.0 if same else fuzz.ratio(a, b) / 100.0
        ts = 1.0 if same else fuzz.token_set_ratio(a, b) / 100.0
        self.ratio.add(r)
        self.token_set.add(ts)
        self.ratio_hist[min(int(r * BINS), BINS - 1)] += 1
        self.token_set_hist[min(int(ts * BINS), BINS - 1)] += 1
        self.log_length_ratio.add(math.log((len(b) + 1) / (len(a) + 1)))
        ea, eb = not a.strip(), not b.strip()
        self.empties[0] += ea
        self.empties[1] += eb
        self.flips["empty_to_text"] += ea and not eb
        self.flips["text_to_empty"] += eb and not ea
        ra, rb = self.is_refusal(a), self.is_refusal(b)
        self.refusals[0] += ra
        self.refusals[1] += rb
        self.flips["refusal_added"] += rb and not ra
        self.flips["refusal_removed"] += ra and not rb
        if p.c_ttft_ms is not None and p.h_ttft_ms is not None:
            self.ttft[0].add(p.c_ttft_ms)
            self.ttft[1].add(p.h_ttft_ms)
            self.ttft_diff.add(p.h_ttft_ms - p.c_ttft_ms)
        ca = tokens_per_second(p.c_tokens, p.c_ttft_ms, p.c_duration_ms)
        cb = tokens_per_second(p.h_tokens, p.h_ttft_ms, p.h_duration_ms)
        if ca is not None and cb is not None:
            self.tps[0].add(ca)
            self.tps[1].add(cb)
            self.tps_diff.add(cb - ca)
        if self.example_count and not same:
            item = (-r, -p.key, self._shown(a), self._shown(b))
            if len(self.examples) < self.example_count:
                heapq.heappush(self.examples, item)
            elif item > self.examples[0]:
                heapq.heapreplace(self.examples, item)
        return same, r

    def _shown(self, text: str) -> str:
        if self.example_mode == "hash":
            return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]
        if self.example_mode == "omit":
            return ""
        return text[: self.example_chars]

    def merge(self, o: TextAggregates) -> None:
        self.n += o.n
        self.exact += o.exact
        for name in ("ratio", "token_set", "log_length_ratio", "ttft_diff", "tps_diff"):
            getattr(self, name).merge(getattr(o, name))
        self.ratio_hist += o.ratio_hist
        self.token_set_hist += o.token_set_hist
        for k, v in o.flips.items():
            self.flips[k] += v
        for i in (0, 1):
            self.refusals[i] += o.refusals[i]
            self.empties[i] += o.empties[i]
            self.ttft[i].merge(o.ttft[i])
            self.tps[i].merge(o.tps[i])
        for item in o.examples:
            if len(self.examples) < self.example_count:
                heapq.heappush(self.examples, item)
            elif item > self.examples[0]:
                heapq.heapreplace(self.examples, item)


def mean_ci(m: Moments, alpha: float) -> dict[str, Any]:
    """Mean with its t interval (``scipy.stats.t``), and the standard deviation."""
    if m.n < 1:
        return {"n": 0, "mean": None, "ci": [None, None], "sd": None}
    var = m.var
    if var is None or m.n < 2:
        return {"n": int(m.n), "mean": f(m.mu), "ci": [None, None], "sd": None}
    se = math.sqrt(var / m.n)
    from scipy import stats as st  # (report time only: workers that fold never import it)

    q = float(st.t.ppf(1 - alpha / 2, m.n - 1))
    return {"n": int(m.n), "mean": f(m.mu), "ci": [f(m.mu - q * se), f(m.mu + q * se)],
            "sd": f(math.sqrt(var))}  # fmt: skip


def hist_quantiles(hist: np.ndarray, qs: tuple[float, ...] = (0.1, 0.5, 0.9)) -> dict[str, Any]:
    """Quantiles of a 0-1 histogram (linear within a bin), to the bin's resolution."""
    total = int(hist.sum())
    if not total:
        return {f"p{int(q * 100)}": None for q in qs}
    cum = np.cumsum(hist)
    out: dict[str, Any] = {}
    for q in qs:
        target = q * total
        i = int(np.searchsorted(cum, target, side="left"))
        before = cum[i - 1] if i else 0
        inside = (target - before) / hist[i] if hist[i] else 0.0
        out[f"p{int(q * 100)}"] = f(round((i + inside) / BINS, 4))
    return out


def text_section(t: TextAggregates, alpha: float) -> dict[str, Any]:
    """The ``divergence.text`` part of the report."""
    n = t.n
    if not n:
        return {"n": 0, "state": "not_enough_data"}
    from router.analysis.proportions import wilson_interval  # (report time only)

    ex = wilson_interval(t.exact, n, alpha)
    llr = mean_ci(t.log_length_ratio, alpha)

    def geo(x: Any) -> Any:
        return f(math.exp(x)) if x is not None else None

    ttft_d = mean_ci(t.ttft_diff, alpha)
    tps_d = mean_ci(t.tps_diff, alpha)
    return {
        "n": n,
        "exact_match": {"rate": f(t.exact / n), "ci": ex.as_list(), "method": "Wilson score"},
        "similarity": {
            "ratio": {**mean_ci(t.ratio, alpha), **hist_quantiles(t.ratio_hist),
                      "histogram": t.ratio_hist.tolist()},
            "token_set_ratio": {**mean_ci(t.token_set, alpha), **hist_quantiles(t.token_set_hist),
                                "histogram": t.token_set_hist.tolist()},
            "method": "rapidfuzz fuzz.ratio and fuzz.token_set_ratio / 100 (1 = identical); "
            "mean with a t interval, quantiles from a 20-bin histogram",
        },
        "length_ratio": {"geometric_mean": geo(llr["mean"]),
                         "ci": [geo(llr["ci"][0]), geo(llr["ci"][1])],
                         "method": "challenger / champion characters, (len + 1) each"},
        "empty": {"champion": t.empties[0], "challenger": t.empties[1]},
        "refusals": {"champion": t.refusals[0], "challenger": t.refusals[1],
                     "patterns": list(t.patterns)},
        "flips": {k: {"n": v, "rate": f(v / n)} for k, v in t.flips.items()},
        "ttft_ms": {"champion": mean_ci(t.ttft[0], alpha), "challenger": mean_ci(t.ttft[1], alpha),
                    "paired_diff": ttft_d},
        "tokens_per_s": {"champion": mean_ci(t.tps[0], alpha),
                         "challenger": mean_ci(t.tps[1], alpha), "paired_diff": tps_d},
        "examples": [
            {"ratio": f(-r), "champion": a, "challenger": b}
            for r, _, a, b in sorted(t.examples, reverse=True)
        ],
    }
