"""Property (issue 20, item 10): a line's verdict depends on that line only.

Random mixtures of valid records, records with one field set to an arbitrary JSON value, and
lines that are not records at all (random bytes, truncated JSON, other JSON values, invalid
UTF-8, repeated keys, blank lines) are read as one page; each line must get the verdict (valid,
or invalid with the same reason) that it gets read alone, and the valid ones must come out in
order. Both schemas the reader uses (numeric predictions and JSON-text predictions) are tried.
"""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.analysis.frames import parse_outcomes, parse_records, record_schema

NOW = 1_790_100_000.0
SCHEMAS = [record_schema(numeric=True, fields=False), record_schema(numeric=False, fields=True)]
TOP = ["v", "request_id", "ts", "served", "experiment", "unit", "mirrored", "segment",
       "champion", "challenger", "contract", "fields", "bucket"]  # fmt: skip
SIDE = ["status", "latency_ms", "prediction", "error", "version"]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=6,
)


def record(i: int) -> dict[str, Any]:
    side = {"version": "v1", "status": 200, "latency_ms": 3.5, "prediction": 0.25, "error": None}
    return {"v": 1, "experiment": "e", "request_id": f"r{i}", "ts": NOW - 100 + i,
            "unit": f"u{i % 7}", "bucket": i, "served": "champion" if i % 2 else "challenger",
            "mirrored": True, "segment": {"country": "de"}, "champion": dict(side),
            "challenger": dict(side, prediction=0.75), "contract": None}  # fmt: skip


@st.composite
def lines(draw: st.DrawFn, i: int) -> bytes:
    kind = draw(st.sampled_from(["valid", "top", "side", "drop", "plausibility", "raw"]))
    rec = record(i)
    if kind == "top":
        rec[draw(st.sampled_from(TOP))] = draw(json_values)
    elif kind == "side":
        side = draw(st.sampled_from(["champion", "challenger"]))
        rec[side][draw(st.sampled_from(SIDE))] = draw(json_values)
    elif kind == "drop":
        rec.pop(draw(st.sampled_from(TOP)), None)
    elif kind == "plausibility":
        rec.update(draw(st.sampled_from([
            {"ts": (NOW - 50) * 1000}, {"ts": NOW + 10 * 86400}, {"ts": 12.0}, {"v": 2},
            {"v": "banana"}, {"served": "both"}, {"unit": 12345},
            {"champion": dict(rec["champion"], latency_ms=-1.0)},
            {"segment": {"country": 5}}, {"segment": "de"}, {"contract": "x"},
            {"champion": None, "served": "champion"},
            {"challenger": {"prediction": "n/a", "status": 200}},
        ])))  # fmt: skip
    if kind != "raw":
        return orjson.dumps(rec)
    good = orjson.dumps(rec)
    raw = draw(st.sampled_from(["bytes", "truncated", "json", "utf8", "dupkey", "blank"]))
    if raw == "bytes":
        return draw(st.binary(max_size=40)).replace(b"\n", b" ")
    if raw == "truncated":
        return good[: draw(st.integers(1, len(good) - 1))]
    if raw == "json":
        return orjson.dumps(draw(json_values))
    if raw == "utf8":
        return good.replace(b'"e"', b'"\xff\xfe"')
    if raw == "dupkey":
        return good[:-1] + b', "ts": ' + orjson.dumps(draw(json_values)) + b"}"
    return draw(st.sampled_from([b"", b"   ", b"\t", b"\r"]))


@st.composite
def pages(draw: st.DrawFn) -> list[bytes]:
    n = draw(st.integers(1, 25))
    return [draw(lines(i)) for i in range(n)]


def verdicts(data: bytes, schema: dict[str, Any]) -> tuple[dict[int, str], list[str]]:
    df, bad = parse_records(data, schema, NOW)
    return dict(bad), df["request_id"].to_list()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(page=pages(), which=st.integers(0, 1))
def test_a_lines_verdict_is_its_verdict_alone(page: list[bytes], which: int) -> None:
    schema = SCHEMAS[which]
    mixed, kept = verdicts(b"\n".join(page), schema)
    expect_kept = []
    for i, line in enumerate(page):
        alone, alone_kept = verdicts(line, schema)
        if not line.strip():
            assert i not in mixed and not alone and not alone_kept
            continue
        assert mixed.get(i) == alone.get(0), (i, line)
        expect_kept += alone_kept
    assert kept == expect_kept


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(st.one_of(
    st.fixed_dictionaries({"request_id": st.text(max_size=4), "metric": st.text(max_size=4),
                           "value": json_values, "ts": json_values}),
    json_values,
), min_size=1, max_size=12))  # fmt: skip
def test_an_outcome_rows_verdict_is_its_verdict_alone(rows: list[Any]) -> None:
    page = [orjson.dumps(r) for r in rows]
    df, bad = parse_outcomes(b"\n".join(page))
    mixed = dict(bad)
    expect_kept = []
    for i, line in enumerate(page):
        alone_df, alone = parse_outcomes(line)
        assert mixed.get(i) == dict(alone).get(0), (i, line)
        expect_kept += alone_df.rows()
    assert df.rows() == expect_kept
