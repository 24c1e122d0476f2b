"""Human approval: the structured questionnaire and the rubber-stamp flag (pure)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class QuestionnaireError(ValueError):
    """The answers are incomplete or invalid; the message names every failing key."""


class Questionnaire(BaseModel):
    """Every check must be answered ``true``; notes are free text kept in the audit."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    model_card_reviewed: Literal[True]
    disaggregated_results_checked: Literal[True]
    known_limitations_acknowledged: Literal[True]
    on_call_in_place: Literal[True]
    on_call_contact: str = Field(min_length=1)
    notes: str = ""


REQUIRED_CHECKS = (
    "model_card_reviewed",
    "disaggregated_results_checked",
    "known_limitations_acknowledged",
    "on_call_in_place",
)


def validate_answers(data: Any) -> Questionnaire:
    if not isinstance(data, dict):
        raise QuestionnaireError("answers: expected a mapping of question -> answer")
    try:
        return Questionnaire.model_validate(data)
    except ValidationError as exc:
        msgs = []
        for e in exc.errors():
            key = ".".join(str(p) for p in e["loc"]) or "(answers)"
            if e["type"] == "extra_forbidden":
                msgs.append(f"{key}: unknown question")
            elif e["type"] == "missing":
                msgs.append(f"{key}: required")
            elif key in REQUIRED_CHECKS:
                msgs.append(f"{key}: must be true (got {e.get('input')!r})")
            else:
                msgs.append(f"{key}: {e['msg']}")
        raise QuestionnaireError("; ".join(msgs)) from None


def is_rubber_stamp(requested_at: float, approved_at: float, threshold_s: float) -> bool:
    """An approval given sooner than ``threshold_s`` after the request opened is suspicious."""
    return approved_at - requested_at < threshold_s
