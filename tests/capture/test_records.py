"""Pure parts of capture: records, contract diff, redaction, outcome validation."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from router.capture.outcomes import parse_outcomes
from router.capture.records import (
    FinalizeOptions,
    PendingRecord,
    Side,
    contract_diff,
    finalize,
    lookup,
    unit_from_body,
)


@pytest.mark.parametrize(
    ("doc", "path", "expected"),
    [
        ({"score": 0.5}, "score", 0.5),
        ({"predictions": [0.1, 0.9]}, "predictions.1", 0.9),
        ({"a": {"b": {"c": "x"}}}, "a.b.c", "x"),
        ({"a": [1]}, "a.5", None),
        ({"a": 1}, "a.b", None),
        ([{"k": 3}], "0.k", 3),
    ],
)
def test_lookup(doc: Any, path: str, expected: Any) -> None:
    assert lookup(doc, path) == expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"user": {"id": "u1"}}', "u1"),
        (b'{"user": {"id": 42}}', "42"),
        (b'{"user": {"id": null}}', None),
        (b'{"user": {"id": {"x": 1}}}', None),
        (b"{broken", None),
        (b"", None),
    ],
)
def test_unit_from_body(body: bytes, expected: str | None) -> None:
    assert unit_from_body(body, "user.id") == expected


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ({"score": 1}, {"score": 2}, None),
        ({"score": 1}, {"score": "1"}, {"missing": [], "extra": [], "retyped": ["score"]}),
        ({"score": 1, "x": 1}, {"score": 1}, {"missing": ["x"], "extra": [], "retyped": []}),
        ({"p": [1, 2]}, {"p": [{"v": 1}]}, {"missing": [], "extra": ["p[].v"], "retyped": ["p[]"]}),
        ({"s": None}, {"s": 0.2}, {"missing": [], "extra": [], "retyped": ["s"]}),
    ],
)
def test_contract_diff(a: Any, b: Any, expected: Any) -> None:
    assert contract_diff(a, b) == expected


def _pending(**kw: Any) -> PendingRecord:
    base: dict[str, Any] = {
        "experiment": "e",
        "request_id": "r1",
        "ts": 1.5,
        "unit": "u",
        "bucket": 12,
        "served": "champion",
        "mirrored": True,
        "champion": Side("v1", 200, 3.0, b'{"score": 0.2, "label": 0}'),
        "challenger": Side("v2", 200, 4.0, b'{"score": 0.3}'),
        "request_body": b'{"user": {"id": "u", "email": "a@b.c"}, "amount": 3}',
    }
    base.update(kw)
    return PendingRecord(**base)


def test_finalize_follows_the_record_schema() -> None:
    rec = finalize(_pending(), FinalizeOptions(prediction_path="score"))
    assert set(rec) == {
        "v", "experiment", "request_id", "ts", "unit", "bucket", "served", "mirrored",
        "segment", "champion", "challenger", "contract",
    }  # fmt: skip
    assert rec["champion"] == {
        "version": "v1", "status": 200, "latency_ms": 3.0, "prediction": 0.2, "error": None
    }  # fmt: skip
    assert rec["challenger"]["prediction"] == 0.3
    assert rec["contract"] == {"missing": ["label"], "extra": [], "retyped": []}
    orjson.dumps(rec)


def test_finalize_unmirrored_side_is_null_and_body_not_kept_by_default() -> None:
    rec = finalize(_pending(mirrored=False, challenger=None), FinalizeOptions())
    assert rec["challenger"] is None and rec["contract"] is None and "fields" not in rec


def test_captured_fields_with_redaction() -> None:
    opts = FinalizeOptions(fields=("amount",), hash_fields=("user.email",), hash_salt="s")
    rec = finalize(_pending(), opts)
    assert rec["fields"]["amount"] == 3
    hashed = rec["fields"]["user.email"]
    assert hashed.startswith("sha256:") and "a@b.c" not in orjson.dumps(rec).decode()


def test_outcome_validation_table() -> None:
    raw = b"\n".join(
        [
            b'{"request_id": "r", "metric": "m", "value": 1}',
            b'{"unit": 7, "metric": "m", "value": true}',
            b'{"metric": "m", "value": 1}',
            b'{"request_id": "r", "metric": "", "value": 1}',
            b'{"request_id": "r", "metric": "m", "value": 1, "oops": 1}',
            b'{"request_id": "r", "metric": "m", "value": 1, "v": 2}',
            b"[1",
        ]
    )
    ok, bad = parse_outcomes(raw, "exp")
    assert [r["experiment"] for r in ok] == ["exp", "exp"]
    assert ok[1]["unit"] == "7" and ok[1]["value"] == 1.0
    reasons = dict(bad)
    assert set(reasons) == {3, 4, 5, 6, 7}
    assert "request_id or unit" in reasons[3]
    assert "metric" in reasons[4] and "unknown" in reasons[5] and "version" in reasons[6]
    assert "invalid JSON" in reasons[7]
