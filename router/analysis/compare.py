"""What changed since a previous look (pure): ``router analyze --compare PREVIOUS.json``.

The previous look is a report (``router analyze --format json``, e.g. yesterday's), or the
promotion controller's state (``router canary status --json``), whose ``last_verdict`` holds the
previous step's decision, gates, counts and window, or that verdict alone. The result is the
report's ``comparison`` key: the decision before and after, every gate's state before and after,
and the headline figures metric by metric with their change; a figure the previous look lacks
is ``null`` before, never left out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from router.analysis.jsonsafe import f


class CompareError(ValueError):
    """The previous look is neither a report nor a controller verdict (names what is missing)."""


def previous_look(doc: Any) -> tuple[str, dict[str, Any]]:
    """(kind, a report-shaped dict) from what ``--compare`` read: a report, the controller's
    state (``last_verdict``) or a verdict summary."""
    if not isinstance(doc, dict):
        raise CompareError("expected a JSON object (a report or `router canary status --json`)")
    if "decision" in doc and "gates" in doc:
        return "report", doc
    verdict = doc.get("last_verdict") if "last_verdict" in doc else doc
    if isinstance(verdict, dict) and "action" in verdict and "gates" in verdict:
        shaped = {
            "decision": {"action": verdict.get("action"), "reasons": verdict.get("reasons", [])},
            "gates": verdict.get("gates") or [],
            "counts": verdict.get("counts") or {},
            "window": verdict.get("window") or {},
            "meta": {"generated_at": verdict.get("at")},
        }
        return "controller verdict", shaped
    if "last_verdict" in doc:
        raise CompareError("the controller state has no last_verdict yet (no step analysed)")
    raise CompareError(
        "not a report (no `decision` and `gates` keys) nor a controller verdict (no `action` "
        "and `gates` keys)"
    )


def _get(d: Any, *path: Any) -> Any:
    for key in path:
        if isinstance(d, dict):
            d = d.get(key)
        elif isinstance(d, list) and isinstance(key, int) and -len(d) <= key < len(d):
            d = d[key]
        else:
            return None
    return d


# (section, figure in words, unit, path in the report)
Figure = tuple[str, str, str, Callable[[dict[str, Any]], Any]]


def _figures(cur: dict[str, Any], prev: dict[str, Any]) -> list[Figure]:
    out: list[Figure] = []

    def path(*p: Any) -> Callable[[dict[str, Any]], Any]:
        return lambda r: _get(r, *p)

    for v in ("champion", "challenger"):
        out.append(("traffic", f"records {v}", "count", path("counts", "per_variant", v)))
        out.append(("traffic", f"units {v}", "count", path("counts", "units", v)))
    out.append(("traffic", "mirrored pairs", "count", path("counts", "mirrored_pairs")))
    out.append(("traffic", "outcomes joined", "count", path("counts", "outcomes", "joined")))
    out.append(("traffic", "sample ratio always-valid p", "p", path("srm", "sequential_p_value")))
    names = list(cur.get("metrics") or {}) + [
        k for k in (prev.get("metrics") or {}) if k not in (cur.get("metrics") or {})
    ]
    for name in names:
        m = _get(cur, "metrics", name) or _get(prev, "metrics", name) or {}
        unit = "proportion" if m.get("type") == "proportion" else "number"
        diff = "pp" if unit == "proportion" else "number"
        for v in ("champion", "challenger"):
            out.append((name, f"mean {v}", unit, path("metrics", name, "variants", v, "mean")))
        out.append((name, "uplift", diff, path("metrics", name, "uplift", "absolute")))
        out.append((name, "always-valid CI lower", diff,
                    path("metrics", name, "uplift", "sequential_ci", 0)))  # fmt: skip
        out.append((name, "always-valid CI upper", diff,
                    path("metrics", name, "uplift", "sequential_ci", 1)))  # fmt: skip
        out.append((name, "always-valid p", "p",
                    path("metrics", name, "uplift", "sequential_p_value")))  # fmt: skip
    for k, unit in (("accuracy", "proportion"), ("roc_auc", "number"), ("rmse", "number")):
        for v in ("champion", "challenger"):
            out.append(("quality", f"{k} {v}", unit, path("quality", "models", v, k)))
    for v in ("champion", "challenger"):
        out.append(("latency", f"p95 {v}", "ms", path("latency", "per_variant", v, "p95")))
    out.append(("latency", "p95 Δ same requests", "ms",
                path("latency", "paired", "quantiles", "p95", "delta_ms")))  # fmt: skip
    for v in ("champion", "challenger"):
        out.append(("errors", f"error rate {v}", "proportion",
                    path("errors", "per_variant", v, "rate")))  # fmt: skip
    out.append(("divergence", "PSI", "number", path("divergence", "psi")))
    out.append(("divergence", "Spearman", "number", path("divergence", "spearman")))
    return out


def _number(x: Any) -> float | None:
    return f(x) if isinstance(x, int | float) and not isinstance(x, bool) else None


def compare(current: dict[str, Any], previous: Any) -> dict[str, Any]:
    """The ``comparison`` section of ``current`` against ``previous`` (see the module)."""
    kind, prev = previous_look(previous)
    gates_now = {g["name"]: g for g in current.get("gates") or []}
    gates_then = {g.get("name"): g for g in prev.get("gates") or [] if isinstance(g, dict)}
    gates = []
    for name in list(gates_now) + [k for k in gates_then if k not in gates_now]:
        then, now = gates_then.get(name) or {}, gates_now.get(name) or {}
        gates.append({
            "name": name,
            "before": then.get("state"),
            "after": now.get("state"),
            "value_before": f(then.get("value")),
            "value_after": f(now.get("value")),
            "changed": then.get("state") != now.get("state"),
        })  # fmt: skip
    figures = []
    for section, name, unit, get in _figures(current, prev):
        a, b = _number(get(prev)), _number(get(current))
        if a is None and b is None:
            continue
        figures.append({
            "section": section,
            "figure": name,
            "unit": unit,
            "before": a,
            "after": b,
            "change": f(b - a) if a is not None and b is not None else None,
        })  # fmt: skip
    before, after = _get(prev, "decision", "action"), _get(current, "decision", "action")
    return {
        "previous": {
            "kind": kind,
            "experiment": prev.get("experiment"),
            "generated_at": f(_get(prev, "meta", "generated_at")),
            "window": {
                "first_record_ts": f(_get(prev, "window", "first_record_ts")),
                "last_record_ts": f(_get(prev, "window", "last_record_ts")),
            },
        },
        "decision": {"before": before, "after": after, "changed": before != after},
        "gates": gates,
        "figures": figures,
    }
