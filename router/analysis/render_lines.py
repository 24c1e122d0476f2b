"""Plain Markdown lines of the report's power and noise sections (CUPED beside the unadjusted
uplift, the sample ratio per segment, the noise floor, the expected accuracy without labels),
used by :mod:`router.analysis.render`, which takes its number formats (``_n``, ``_ci``) from
here."""

from __future__ import annotations

from typing import Any


def _n(x: Any, nd: int = 4) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return f"{x:.{nd}g}"
    return str(x)


def _ci(ci: list[Any] | None) -> str:
    if not ci or ci[0] is None:
        return "–"
    return f"[{_n(ci[0])}, {_n(ci[1])}]"


def noise_floor_lines(nf: dict[str, Any]) -> list[str]:
    """Plain lines: the champion's self-divergence beside the challenger's, and their ratio."""
    if nf.get("state") != "ok":
        return [f"- {nf.get('state')}: {nf.get('pairs', 0)} repeat pairs "
                "(set experiment.noise_floor)"]  # fmt: skip
    lines = [f"- {nf['comparable']} comparable champion-vs-champion pairs"]
    for m, nv in nf["measures"].items():
        cv, mult = nf["challenger"].get(m), nf["multiple"].get(m)
        lines.append(f"- {m}: champion vs itself {_n(nv)}, challenger vs champion {_n(cv)}, "
                     f"multiple {_n(mult)}")  # fmt: skip
    for c in nf.get("contract", [])[:10]:
        if c["beyond_noise"]:
            lines.append(f"- contract: `{c['path']}` {c['change']} in "
                         f"{_n(c['challenger_share'])} of challenger pairs vs "
                         f"{_n(c['noise_share'])} of repeat pairs")  # fmt: skip
    return lines


def expected_accuracy_lines(ea: dict[str, Any]) -> list[str]:
    """Plain lines: each model's expected accuracy, and the realised one where labelled."""
    lines = []
    for name, m in ea["models"].items():
        line = f"- {name}: expected {_n(m['expected'])} {_ci(m['ci'])} over {m['n']} scores"
        lab = m.get("labelled")
        if lab:
            line += (f"; labelled {lab['n']}: realised {_n(lab['realised'])} vs expected "
                     f"{_n(lab['expected'])} {_ci(lab['ci'])} ({m['state']})")  # fmt: skip
        lines.append(line)
    return lines


def srm_segment_lines(bs: dict[str, Any] | None) -> list[str]:
    """Plain lines: the per-segment sample-ratio verdict and the mismatched values."""
    if not bs:
        return []
    lines = [f"- by segment ({bs['state']}): {bs['reason']}"]
    for r in bs.get("rows", []):
        if r["mismatch"]:
            lines.append(
                f"  - {r['field']}={r['value']}: units {r['observed']} vs expected "
                f"{[_n(x) for x in r['expected']]}, Holm-adjusted always-valid p = "
                f"{_n(r['sequential_p_holm'])}"
            )
    return lines


def cuped_lines(metrics: dict[str, Any]) -> list[str]:
    """Plain lines per metric: the unadjusted and the CUPED-adjusted uplift side by side."""
    lines = []
    for name, mt in metrics.items():
        cu = mt.get("cuped")
        if not cu:
            continue
        up, adj = mt["uplift"], cu.get("adjusted")
        cov = cu["covariate"]
        src = f"metric `{cov['metric']}`" if cov["source"] == "metric" else "own history"
        with_cov = sum(cu["units_with_covariate"].values())
        if adj is None:
            lines.append(f"- {name}: not adjusted ({cu['state']}; covariate: {src}, "
                         f"{with_cov} units with one)")  # fmt: skip
            continue
        lines.append(
            f"- {name}: unadjusted Δ {_n(up['absolute'])} {_ci(up['ci'])} p = "
            f"{_n(up['p_value'])}; adjusted Δ {_n(adj['absolute'])} {_ci(adj['ci'])} p = "
            f"{_n(adj['p_value'])}, seq. {_ci(adj['sequential_ci'])}; variance reduction "
            f"{_n(cu['variance_reduction'])} (theta {_n(cu['theta'])}, r = "
            f"{_n(cu['correlation'])}; covariate: {src}, {with_cov} units with one)"
        )
    return lines
