"""Both models compared: quality on the same labelled requests, latency, errors, and how
differently they answer the same requests (divergence) (pure)."""

from __future__ import annotations

from typing import Any

from router.analysis import fmt
from router.analysis.doc import Bullets, Note, Para, Section, Table

# quality figures: (name in words, formatter of the level, of the difference)
QUALITY = {
    "accuracy": ("accuracy", fmt.pct, fmt.pp),
    "log_loss": ("log loss (lower is better)", fmt.num, lambda v: fmt.signed(v)),
    "brier": ("Brier score (lower is better)", fmt.num, lambda v: fmt.signed(v)),
    "roc_auc": ("ROC AUC", fmt.num, lambda v: fmt.signed(v)),
    "mae": ("MAE (lower is better)", fmt.num, lambda v: fmt.signed(v)),
    "rmse": ("RMSE (lower is better)", fmt.num, lambda v: fmt.signed(v)),
}


def quality_section(r: dict[str, Any]) -> Section:
    qu = r["quality"]
    lede = (
        "Both models on the same labelled requests (mirrored pairs joined to the label "
        f"outcome `{qu.get('label_metric')}`): paired tests, so request-to-request noise cancels."
    )
    if qu.get("state") != "ok":
        return Section("quality", "Quality on labelled pairs", lede,
                       [Para(f"No labels joined yet (outcome metric `{qu.get('label_metric')}`)."
                             )])  # fmt: skip
    m, tests = qu["models"], qu.get("tests", {})
    rows = []
    for k in sorted(set(m["champion"]) | set(m["challenger"])):
        word, level, diff = QUALITY.get(k, (k, fmt.num, lambda v: fmt.signed(v)))
        t = tests.get(k, {})
        a, b = m["champion"].get(k), m["challenger"].get(k)
        delta = t.get("delta", b - a if a is not None and b is not None else None)
        rows.append([word, level(a), level(b), diff(delta), fmt.bracket(t.get("ci"), diff),
                     fmt.pvalue(t.get("p_value")) if "p_value" in t else fmt.NA])  # fmt: skip
    notes = [f"{QUALITY.get(k, (k,))[0]}: {t.get('method')}" for k, t in tests.items()
             if t.get("method")]  # fmt: skip
    return Section(
        "quality",
        f"Quality on labelled pairs ({fmt.count(qu['n'])} requests)",
        lede,
        [
            Table(["figure", "champion", "challenger", "Δ challenger − champion", "95% CI", "p"],
                  rows, numeric=[False, True, True, True, True, True]),
            Note("Tests: " + "; ".join(notes) + "."),
        ],
    )


def _q(d: dict[str, Any], k: str) -> str:
    return fmt.ms(d.get(k))


def latency_section(r: dict[str, Any]) -> Section:
    lat = r["latency"]
    rows = []
    for v, d in lat["per_variant"].items():
        rows.append([f"{v} (served)", fmt.count(d["n"]), _q(d, "p50"), _q(d, "p95"),
                     fmt.bracket(d.get("p95_ci"), fmt.ms), _q(d, "p99")])  # fmt: skip
    p = lat["paired"]
    q = p["quantiles"]

    def delta(k: str) -> str:
        return fmt.signed(q[k].get("delta_ms"), 2, lambda x, s: fmt.ms(x, s))

    def dms(x: Any) -> str:
        return fmt.signed(x, 2, lambda y, s: fmt.ms(y, s))

    if p.get("n"):
        rows.append(["Δ challenger − champion, same requests", fmt.count(p["n"]), delta("p50"),
                     delta("p95"), fmt.bracket([q["p95"].get("delta_lower_ms"),
                                                q["p95"].get("delta_upper_ms")], dms),
                     delta("p99")])  # fmt: skip
    blocks: list[Any] = [
        Table(["", "requests", "p50", "p95", "p95 95% CI", "p99"], rows,
              numeric=[False, True, True, True, True, True]),
        Note("An interval side shown as – needs more requests for that order statistic "
             "(p95 needs 72, p99 368)."),
    ]
    if p.get("n") and p.get("mean_diff_ms") is not None:
        blocks.append(Para(
            f"Mean difference on the same requests: {dms(p['mean_diff_ms'])} "
            f"(95% CI {fmt.interval(p.get('mean_diff_ci'), dms)}, paired t-test "
            f"p {_p(p.get('p_value'))})."
        ))  # fmt: skip
    return Section(
        "latency",
        "Latency",
        "Client-facing latency of each model: quantiles from mergeable log histograms with "
        "distribution-free intervals; the paired row compares both models on the same mirrored "
        "requests.",
        blocks,
    )


def _p(p: Any) -> str:
    text = fmt.pvalue(p)
    return text if text.startswith("<") else f"= {text}"


def errors_section(r: dict[str, Any]) -> Section:
    e = r["errors"]
    rows = [[v, fmt.count(x["n"]), fmt.count(x["errors"]), fmt.pct(x["rate"]),
             fmt.bracket(x["ci"], fmt.pct)] for v, x in e["per_variant"].items()]  # fmt: skip
    blocks: list[Any] = [Table(["variant", "requests", "errors", "error rate", "95% CI"], rows,
                               numeric=[False, True, True, True, True])]  # fmt: skip
    p = e["paired"]
    if p.get("delta") is not None:
        blocks.append(Para(
            f"On the same {fmt.count(p['n'])} mirrored requests: challenger − champion "
            f"{fmt.pp(p['delta'])} (95% CI {fmt.interval(p['ci'], fmt.pp)}, score test "
            f"p {_p(p['p_value'])}; McNemar p {_p(p['mcnemar']['p_value'])})."
        ))  # fmt: skip
    return Section(
        "errors",
        "Errors",
        "Share of requests that failed (5xx, timeouts, connection errors) per model, with "
        "Wilson intervals; the difference paired on mirrored requests (Tango's score test).",
        blocks,
    )


DIVERGENCE_WORDS = {
    "mean_abs_diff": "mean |difference| of the scores",
    "rmse": "RMSE between the scores",
    "pearson": "Pearson correlation",
    "spearman": "Spearman rank correlation",
    "psi": "population stability index (PSI)",
    "js_distance": "Jensen-Shannon distance",
    "wasserstein_normalised": "Wasserstein distance / champion SD",
    "agreement": "agreement (same class)",
    "cohen_kappa": "Cohen's kappa",
    "argmax_agreement": "argmax agreement",
    "mean_js_distance": "mean Jensen-Shannon distance",
}


def divergence_section(r: dict[str, Any]) -> Section:
    dv = r["divergence"]
    lede = ("How differently the two models answer the same mirrored requests (not which is "
            "right: see quality).")  # fmt: skip
    title = f"Divergence ({dv.get('kind')} predictions, mirrored pairs)"
    if not dv.get("n"):
        return Section("divergence", title, lede, [Para("No comparable mirrored pairs.")])
    rows = []
    for k, word in DIVERGENCE_WORDS.items():
        if dv.get(k) is not None:
            value = fmt.num(dv[k])
            if k == "psi" and dv.get("psi_band"):
                value += f" ({dv['psi_band']})"
            rows.append([word, value])
    if "ks" in dv:
        rows.append(["Kolmogorov-Smirnov D", f"{fmt.num(dv['ks']['statistic'])} "
                     f"(p {_p(dv['ks']['p_value'])})"])  # fmt: skip
    blocks: list[Any] = [Para(f"{fmt.count(dv['n'])} comparable pairs.")]
    if rows:
        blocks.append(Table(["figure", "value"], rows, numeric=[False, True]))
    if dv.get("flip_rate"):
        blocks.append(Para("Decision flip rate: share of requests where the two models land on "
                           "different sides of a decision threshold."))  # fmt: skip
        blocks.append(Table(["threshold", "flip rate"],
                            [[fmt.num(float(t)), fmt.pct(v)] for t, v in dv["flip_rate"].items()],
                            numeric=[True, True]))  # fmt: skip
    if dv.get("text"):
        blocks += text_blocks(dv["text"])
    paths = dv["contract"]["paths"][:10]
    if paths:
        blocks.append(Para("Response fields the challenger changes:"))
        blocks.append(Table(["JSON path", "change", "share of pairs"],
                            [[f"`{x['path']}`", x["change"], fmt.pct(x["share"])] for x in paths],
                            numeric=[False, False, True]))  # fmt: skip
    else:
        blocks.append(Bullets(["Response contract: no field missing, added or retyped above the "
                               "noise share."]))  # fmt: skip
    return Section("divergence", title, lede, blocks)


def text_blocks(t: dict[str, Any]) -> list[Any]:
    """Text predictions (``divergence.text``): agreement, similarity, length, refusals, the
    paired time to first token and speed, and the most different pairs."""
    sim = t["similarity"]
    ratio, tset, ex, lr = sim["ratio"], sim["token_set_ratio"], t["exact_match"], t["length_ratio"]

    def with_ci(value: Any, ci: Any, f: Any = fmt.num) -> str:
        return f"{f(value)} {fmt.bracket(ci, f)}"

    rows = [
        ["exact match", with_ci(ex["rate"], ex["ci"], fmt.pct)],
        ["similarity (rapidfuzz ratio), mean", with_ci(ratio["mean"], ratio["ci"])],
        ["similarity (ratio), p10 / median / p90",
         " / ".join(fmt.num(ratio[q]) for q in ("p10", "p50", "p90"))],
        ["similarity (token-set ratio), mean", with_ci(tset["mean"], tset["ci"])],
        ["length ratio (challenger / champion)", with_ci(lr["geometric_mean"], lr["ci"])],
    ]  # fmt: skip
    for k, word in (("empty_to_text", "empty → text"), ("text_to_empty", "text → empty"),
                    ("refusal_added", "refusal added"), ("refusal_removed", "refusal removed")):
        rows.append([f"flips: {word}", f"{fmt.count(t['flips'][k]['n'])} "
                     f"({fmt.pct(t['flips'][k]['rate'])})"])  # fmt: skip
    for key, word, unit in (("ttft_ms", "time to first token", fmt.ms),
                            ("tokens_per_s", "tokens per second", fmt.num)):
        d = t[key]["paired_diff"]
        if d["n"]:
            rows.append([f"{word}: champion / challenger",
                         f"{unit(t[key]['champion']['mean'])} / "
                         f"{unit(t[key]['challenger']['mean'])}"])  # fmt: skip
            rows.append([f"{word}: paired difference (n {fmt.count(d['n'])})",
                         f"{fmt.signed(d['mean'])} {fmt.bracket(d['ci'], fmt.num)}"])  # fmt: skip
    blocks: list[Any] = [
        Para(f"Text predictions: {fmt.count(t['n'])} pairs where both answered."),
        Table(["figure", "value"], rows, numeric=[False, True]),
    ]
    if t["examples"]:
        blocks.append(Para("The most different pairs (lowest similarity):"))
        blocks.append(Bullets([f"ratio {fmt.num(e['ratio'])}: champion “{e['champion']}” / "
                               f"challenger “{e['challenger']}”"
                               for e in t["examples"]]))  # fmt: skip
    return blocks
