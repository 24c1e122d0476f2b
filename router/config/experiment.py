"""The experiment: unit, split and mirror shares, segments, response contract, expiry."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from router.config.base import _Strict


class UnitSource(_Strict):
    """Where the experiment unit (user, account) comes from: a header, else a JSON body path."""

    header: str | None = "X-User-Id"
    json_path: str | None = None


class SegmentField(_Strict):
    """A segment dimension recorded with each request (header first, then JSON body path)."""

    name: str = Field(min_length=1)
    header: str | None = None
    json_path: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> SegmentField:
        if not self.header and not self.json_path:
            raise ValueError("needs a header or a json_path")
        return self


class ContractConfig(_Strict):
    """How two responses to the same request are compared (challenger vs champion, and the
    champion's repeat vs itself for the noise floor). Paths are in the record's notation:
    dotted keys, ``[]`` for the elements of an array (``predictions[].score``)."""

    ignore: list[str] = Field(
        default_factory=list,
        description="paths left out of the diff, with everything under them (e.g. a request "
        "time or a trace id that differs on every answer)",
    )
    compare_values: bool = Field(
        default=False,
        description="also list leaf values that differ (record contract 'changed'), not only "
        "fields missing, extra or retyped",
    )
    tolerance: dict[str, float] = Field(
        default_factory=dict,
        description="absolute tolerance per numeric path: values within it count as equal",
    )
    default_tolerance: float = Field(default=0.0, ge=0, description="for other numeric paths")

    @field_validator("tolerance")
    @classmethod
    def _non_negative(cls, v: dict[str, float]) -> dict[str, float]:
        for path, tol in v.items():
            if not tol >= 0:
                raise ValueError(f"tolerance of {path!r} must be >= 0 (got {tol!r})")
        return v


class ExperimentConfig(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    salt: str = Field(min_length=1)
    mirror_salt: str | None = Field(
        default=None, description="salt of the mirror decision; default '<salt>:mirror'"
    )
    unit: UnitSource = Field(default_factory=UnitSource)
    split: float = Field(default=0.0, ge=0.0, le=1.0)
    mirror: float = Field(default=0.0, ge=0.0, le=1.0)
    noise_floor: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="fraction of units whose champion-answered requests are sent to the "
        "champion a second time (off the hot path, never answered to the client): the "
        "champion-vs-champion pairs that measure its own nondeterminism",
    )
    noise_salt: str | None = Field(
        default=None, description="salt of the noise-floor decision; default '<salt>:noise'"
    )
    contract: ContractConfig = Field(default_factory=ContractConfig)
    fallback: Literal["champion", "none"] = "champion"
    shadow_header: str = "X-Shadow-Request: 1"
    prediction_path: str | None = "score"
    prediction_kind: Literal["score", "class", "vector", "value", "text"] = "score"
    prediction_format: Literal["json", "openai"] = Field(
        default="json",
        description="json: the value at prediction_path; openai: the text of an OpenAI-"
        "compatible chat/completions answer, streamed (SSE) or not (prediction_kind: text)",
    )
    segments: list[SegmentField] = Field(default_factory=list)
    force_header: str | None = Field(
        default="X-Router-Force",
        description="request header naming a variant to force (QA); honoured only with the "
        "force token or for a unit on force_units; None: never honoured",
    )
    force_token_header: str = Field(
        default="X-Router-Force-Token", min_length=1, description="header carrying that token"
    )
    force_units: list[str] = Field(
        default_factory=list, description="units allowed to force a variant without a token"
    )
    expires_at: float | None = Field(
        default=None, description="unix seconds (or an ISO-8601 time) when the experiment ends"
    )
    max_duration_s: float | None = Field(
        default=None, gt=0, description="seconds after the router starts when it ends"
    )

    @field_validator("expires_at", mode="before")
    @classmethod
    def _parse_expiry(cls, v: Any) -> Any:
        if isinstance(v, str):
            from datetime import UTC, datetime

            try:
                t = datetime.fromisoformat(v.replace("Z", "+00:00"))
            except ValueError as exc:
                raise ValueError(f"not an ISO-8601 time or unix seconds: {v!r}") from exc
            if t.tzinfo is None:
                t = t.replace(tzinfo=UTC)
            return t.timestamp()
        if hasattr(v, "timestamp"):  # YAML reads an unquoted timestamp as a datetime
            from datetime import UTC

            if getattr(v, "tzinfo", None) is None:
                v = v.replace(tzinfo=UTC)
            return v.timestamp()
        return v

    @field_validator("shadow_header")
    @classmethod
    def _check_shadow_header(cls, v: str) -> str:
        name, sep, value = v.partition(":")
        if not sep or not name.strip() or name.strip().lower() == "host":
            raise ValueError("must look like 'Name: value' and may not be Host")
        return f"{name.strip()}: {value.strip()}"

    @property
    def effective_mirror_salt(self) -> str:
        return self.mirror_salt or f"{self.salt}:mirror"

    @property
    def effective_noise_salt(self) -> str:
        return self.noise_salt or f"{self.salt}:noise"

    @property
    def shadow_header_pair(self) -> tuple[str, str]:
        name, _, value = self.shadow_header.partition(":")
        return name.strip(), value.strip()
