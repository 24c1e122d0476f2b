"""Audit chain, questionnaire, guardrails, signatures, config: pure functions."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from router.promotion.approval import QuestionnaireError, validate_answers
from router.promotion.audit import GENESIS, Head, chain_record, verify_chain
from router.promotion.config import (
    GuardrailConfig,
    PromotionConfigError,
    load_promotion_config,
    parse_promotion_config,
)
from router.promotion.guardrails import GuardrailState, check_guardrails, evaluate
from router.promotion.webhooks import backoff_delays, sign, verify_signature


def chain(n: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    prev = GENESIS
    for i in range(n):
        rec = chain_record({"event": f"e{i}", "data": {"x": i}}, seq=i, prev=prev)
        out.append(rec)
        prev = rec["hash"]
    return out


def head(recs: list[dict[str, Any]]) -> Head:
    return Head(len(recs), recs[-1]["hash"])


def test_intact_chain_verifies() -> None:
    recs = chain(5)
    assert verify_chain(recs, head(recs)) == []


def test_edit_is_detected_at_its_position() -> None:
    recs = chain(5)
    h = head(recs)
    recs[2] = copy.deepcopy(recs[2])
    recs[2]["data"]["x"] = 99
    problems = verify_chain(recs, h)
    assert [(p.position, p.kind) for p in problems] == [(2, "edited")]


def test_edit_with_recomputed_hash_breaks_the_next_link() -> None:
    recs = chain(5)
    h = head(recs)
    forged = chain_record({"event": "e2", "data": {"x": 99}}, seq=2, prev=recs[1]["hash"])
    recs[2] = forged
    problems = verify_chain(recs, h)
    assert [(p.position, p.kind) for p in problems] == [(3, "edited")]


def test_delete_in_the_middle_and_at_the_end() -> None:
    recs = chain(5)
    h = head(recs)
    mid = recs[:2] + recs[3:]
    problems = verify_chain(mid, h)
    assert (2, "deleted") in [(p.position, p.kind) for p in problems]
    assert "seq 2 missing" in str(problems[0])
    tail = recs[:4]
    assert [(p.kind) for p in verify_chain(tail, h)] == ["truncated"]


def test_insert_is_detected() -> None:
    recs = chain(5)
    h = head(recs)
    fake = chain_record({"event": "fake", "data": {}}, seq=2, prev=recs[1]["hash"])
    bad = [*recs[:2], fake, *recs[2:]]
    kinds = [(p.position, p.kind) for p in verify_chain(bad, h)]
    assert (3, "inserted") in kinds
    assert any(k == "inserted" for _, k in kinds)


def test_unreadable_record() -> None:
    recs: list[dict[str, Any] | None] = [*chain(2), None]
    assert [p.kind for p in verify_chain(recs)] == ["unreadable"]


GOOD = {
    "model_card_reviewed": True,
    "disaggregated_results_checked": True,
    "known_limitations_acknowledged": True,
    "on_call_in_place": True,
    "on_call_contact": "@ml-oncall",
    "notes": "looked at segments",
}


def test_questionnaire_complete() -> None:
    assert validate_answers(GOOD).on_call_contact == "@ml-oncall"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model_card_reviewed": False}, "model_card_reviewed: must be true"),
        ({"on_call_in_place": "yes"}, "on_call_in_place: must be true"),
        ({"disaggregated_results_checked": None}, "disaggregated_results_checked"),
        ({"surprise": 1}, "surprise: unknown question"),
        ({"on_call_contact": ""}, "on_call_contact"),
    ],
)
def test_questionnaire_rejects(change: dict[str, Any], message: str) -> None:
    with pytest.raises(QuestionnaireError, match=message):
        validate_answers(dict(GOOD, **change))


def test_questionnaire_missing_names_every_key() -> None:
    with pytest.raises(QuestionnaireError) as err:
        validate_answers({"model_card_reviewed": True})
    for key in (
        "disaggregated_results_checked",
        "known_limitations_acknowledged",
        "on_call_in_place",
        "on_call_contact",
    ):
        assert f"{key}: required" in str(err.value)


def rec(side_status: dict[str, int | None], lat: float = 10.0) -> dict[str, Any]:
    out: dict[str, Any] = {"champion": None, "challenger": None}
    for side, status in side_status.items():
        out[side] = {"status": status, "latency_ms": lat, "error": None if status == 200 else "x"}
    return out


def records(
    n: int, champ_err: int, chall_err: int, chall_lat: float = 10.0
) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        out.append(rec({"champion": 503 if i < champ_err else 200}))
        out.append(rec({"challenger": 503 if i < chall_err else 200}, lat=chall_lat))
    return out


GC = GuardrailConfig(min_requests=100, max_error_rate_delta=0.02)


@pytest.mark.parametrize(
    ("n", "champ_err", "chall_err", "breach"),
    [
        (200, 2, 3, False),  # 1.5% vs 1%: within delta
        (200, 2, 40, True),  # 20% vs 1%
        (50, 0, 25, False),  # too few calls to judge
        (2000, 20, 150, True),  # 7.5% vs 1%: the interval lies above the 2-point limit
        # 3.5% vs 1%: 2.5 points is past the limit, but 2,000 calls cannot show that it is
        # more than 2 (a z-test of *no difference* would have rolled it back)
        (2000, 20, 70, False),
    ],
)
def test_error_guardrail(n: int, champ_err: int, chall_err: int, breach: bool) -> None:
    r = check_guardrails(records(n, champ_err, chall_err), GC)
    check = next(c for c in r.checks if c.name == "error_rate_delta")
    assert (not check.passed) is breach
    assert check.threshold == 0.02
    assert r.challenger.calls == n and r.champion.calls == n


def test_latency_guardrail() -> None:
    slow = check_guardrails(records(300, 0, 0, chall_lat=50.0), GC)
    assert slow.breached and slow.reasons[0].startswith("challenger p95 50.")
    near = check_guardrails(records(300, 0, 0, chall_lat=12.0), GC)
    assert not near.breached
    # too few latencies for an always-valid upper bound on the champion's p95: no verdict
    few = check_guardrails(records(100, 0, 0, chall_lat=50.0), GC)
    assert not few.breached
    assert next(c for c in few.checks if c.name == "latency_regression").state == "not_enough_data"


def test_one_errored_challenger_call_never_rolls_back() -> None:
    cfg = GuardrailConfig(min_requests=1, max_error_rate_delta=0.0)
    r = check_guardrails([rec({"champion": 200}), rec({"challenger": 503})], cfg)
    assert not r.breached
    check = next(c for c in r.checks if c.name == "error_rate_delta")
    assert check.state == "inconclusive" and check.ci[0] is not None and check.ci[0] < 0


def test_tallies_fold_incrementally() -> None:
    """Folding a step's records tick by tick gives the same checks as all at once."""
    recs = records(400, 4, 30, chall_lat=30.0)
    whole = check_guardrails(recs, GC)
    st = GuardrailState()
    for i in range(0, len(recs), 97):
        st.add(recs[i : i + 97])
    parts = evaluate(st, GC)
    assert [c.to_json() for c in parts.checks] == [c.to_json() for c in whole.checks]


def test_signature_roundtrip_and_tamper() -> None:
    body = b'{"event":"rollback"}'
    sig = sign("s3cret", body, 1_700_000_000)
    assert sig.startswith("sha256=") and len(sig) == 7 + 64
    assert verify_signature("s3cret", body, "1700000000", sig, now=1_700_000_010)
    assert not verify_signature("s3cret", body + b" ", "1700000000", sig, now=1_700_000_010)
    assert not verify_signature("other", body, "1700000000", sig, now=1_700_000_010)
    assert not verify_signature("s3cret", body, "1700000001", sig, now=1_700_000_010)
    assert not verify_signature("s3cret", body, "1700000000", sig, now=1_700_001_000)  # stale


def test_backoff_is_exponential_and_capped() -> None:
    assert backoff_delays(0.5, 3.0, 6) == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_shipped_config_and_errors_name_the_key(tmp_path: Any) -> None:
    cfg = load_promotion_config("configs/promotion.yaml")
    assert [s.split for s in cfg.steps] == [0.0, 0.05, 0.25, 0.5, 1.0]
    with pytest.raises(PromotionConfigError, match=r"promotion\.webhooks\.retries: unknown key"):
        parse_promotion_config({"promotion": {"webhooks": {"retries": 3}}}, "f.yaml")
    with pytest.raises(PromotionConfigError, match=r"f\.yaml: promotion\.steps\.0\.split"):
        parse_promotion_config({"steps": [{"split": 2}]}, "f.yaml")
    with pytest.raises(PromotionConfigError, match="must not decrease"):
        parse_promotion_config({"steps": [{"split": 0.5}, {"split": 0.1}]}, "f.yaml")
    with pytest.raises(PromotionConfigError, match="unknown top-level"):
        parse_promotion_config({"promotion": {}, "extra": 1}, "f.yaml")
    assert parse_promotion_config({"approval": {"high_stakes": True}}).approval.required == 2


def test_deprecated_guardrail_keys_load_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """``guardrails.window_s`` and ``min_z`` still load (old files) but say they do nothing."""
    from router.promotion.config import parse_promotion_config

    with caplog.at_level("WARNING", logger="router.promotion"):
        parse_promotion_config({"guardrails": {"window_s": 60, "min_z": 3}})
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "guardrails.window_s is deprecated and ignored" in said
    assert "guardrails.min_z is deprecated and ignored" in said
    caplog.clear()
    with caplog.at_level("WARNING", logger="router.promotion"):
        parse_promotion_config({"guardrails": {"alpha": 0.05}})
    assert not caplog.records
