"""The ``promotion:`` configuration (``configs/promotion.yaml``), validated with pydantic.

Unknown keys are errors that name the key and the file. The file may hold the section at top
level or under a ``promotion:`` key, so it can later move into ``policy.yaml`` unchanged.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class PromotionConfigError(Exception):
    """Invalid promotion config; ``str(err)`` names the file, the key and the problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StepConfig(_Strict):
    """One ramp step. ``split: 0`` with ``mirror > 0`` is a shadow step."""

    name: str | None = None
    split: float = Field(ge=0.0, le=1.0)
    mirror: float = Field(default=0.0, ge=0.0, le=1.0)
    min_duration_s: float = Field(default=600.0, ge=0.0)
    max_duration_s: float | None = Field(default=None, gt=0.0)

    @property
    def stage(self) -> str:
        return "shadow" if self.split == 0.0 else "canary"

    def label(self, index: int) -> str:
        if self.name:
            return self.name
        return "shadow" if self.split == 0.0 else f"canary {self.split * 100:g}%"


def _default_steps() -> list[StepConfig]:
    return [
        StepConfig(name="shadow", split=0.0, mirror=1.0, min_duration_s=600.0),
        StepConfig(split=0.05, min_duration_s=1800.0),
        StepConfig(split=0.25, min_duration_s=1800.0),
        StepConfig(split=0.5, min_duration_s=3600.0),
        # mirror at 100% keeps the champion answering (off-path) so there is still a comparison
        StepConfig(split=1.0, mirror=1.0, min_duration_s=3600.0),
    ]


class GuardrailConfig(_Strict):
    """Fast checks between full analyses, over the current step's captured records (cumulative
    from the step's start, with always-valid bounds: see :mod:`router.promotion.guardrails`)."""

    window_s: float | None = Field(
        default=None,
        gt=0.0,
        description="deprecated and ignored: the checks use every record of the step (a "
        "confidence sequence stays valid over all looks only on cumulative data)",
    )
    min_requests: int = Field(default=200, ge=1)
    max_error_rate_delta: float = Field(default=0.02, ge=0.0, le=1.0)
    min_z: float | None = Field(
        default=None,
        ge=0.0,
        description="deprecated and ignored: a breach needs the always-valid interval past "
        "the limit at level alpha",
    )
    alpha: float = Field(
        default=0.05,
        gt=0.0,
        lt=1.0,
        description="chance of a false rollback at a limit over all the step's checks",
    )
    latency_quantile: float = Field(default=0.95, gt=0.0, lt=1.0)
    max_latency_ratio: float = Field(default=1.5, ge=1.0)
    min_latency_delta_ms: float = Field(default=20.0, ge=0.0)

    @model_validator(mode="after")
    def _warn_deprecated(self) -> GuardrailConfig:
        for key in ("window_s", "min_z"):
            if getattr(self, key) is not None:
                logging.getLogger("router.promotion").warning(
                    "guardrails.%s is deprecated and ignored: the guardrails judge every record "
                    "of the step with an always-valid interval at guardrails.alpha; remove it",
                    key,
                )
        return self


class ApprovalConfig(_Strict):
    reviewers_required: int = Field(default=1, ge=1, le=5)
    high_stakes: bool = False
    rubber_stamp_s: float = Field(default=60.0, ge=0.0)

    @property
    def required(self) -> int:
        return max(self.reviewers_required, 2 if self.high_stakes else 1)


class WebhookConfig(_Strict):
    urls: list[str] = Field(default_factory=list)
    secret_env: str = "ROUTER_WEBHOOK_SECRET"
    timeout_s: float = Field(default=5.0, gt=0.0)
    max_attempts: int = Field(default=5, ge=1)
    backoff_initial_s: float = Field(default=0.5, gt=0.0)
    backoff_max_s: float = Field(default=30.0, gt=0.0)
    queue_size: int = Field(default=1000, ge=1)


class RoutersConfig(_Strict):
    admin_prefix: str = "/_router"
    token_env: str = "ROUTER_ADMIN_TOKEN"
    timeout_s: float = Field(default=2.0, gt=0.0)
    retries: int = Field(default=3, ge=1)


class LeaseConfig(_Strict):
    ttl_s: float = Field(default=15.0, gt=0.0)


class FleetConfig(_Strict):
    """Routers sharing the experiment's Redis report the live-state version they applied
    (heartbeats); the controller waits for them before a step's clock starts."""

    converge_timeout_s: float = Field(
        default=10.0, ge=0.0, description="longest wait for every replica to apply a change"
    )
    stale_after_s: float = Field(
        default=5.0, gt=0.0, description="a replica whose last heartbeat is older is stale"
    )
    forget_after_s: float = Field(
        default=300.0, gt=0.0, description="heartbeats older than this are removed (pod gone)"
    )


class AuditConfig(_Strict):
    dir: str = ".router-data/audit"


class PromotionConfig(_Strict):
    steps: list[StepConfig] = Field(default_factory=_default_steps, min_length=1)
    check_interval_s: float = Field(default=5.0, gt=0.0)
    analysis_interval_s: float = Field(default=60.0, gt=0.0)
    rollback_mirror: float = Field(default=0.0, ge=0.0, le=1.0)
    settle_s: float = Field(
        default=2.0,
        ge=0.0,
        description="records this soon after a step change are left out of the step's analysis "
        "and guardrails (routers apply a change within about a second)",
    )
    guardrails: GuardrailConfig = Field(default_factory=GuardrailConfig)
    approval: ApprovalConfig = Field(default_factory=ApprovalConfig)
    webhooks: WebhookConfig = Field(default_factory=WebhookConfig)
    routers: RoutersConfig = Field(default_factory=RoutersConfig)
    lease: LeaseConfig = Field(default_factory=LeaseConfig)
    fleet: FleetConfig = Field(default_factory=FleetConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)

    @model_validator(mode="after")
    def _steps_ramp(self) -> PromotionConfig:
        splits = [s.split for s in self.steps]
        if splits != sorted(splits):
            raise ValueError("steps: split fractions must not decrease")
        if self.steps[-1].split == 0.0:
            raise ValueError("steps: the last step must send traffic to the challenger")
        return self


def _format_error(err: ValidationError, source: str) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        parts.append(f"{source}: promotion.{loc}: {msg}")
    return "; ".join(parts)


def parse_promotion_config(data: Any, source: str = "<config>") -> PromotionConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PromotionConfigError(f"{source}: expected a mapping at top level")
    if "promotion" in data:
        extra = sorted(set(data) - {"promotion"})
        if extra:
            raise PromotionConfigError(f"{source}: unknown top-level key(s): {', '.join(extra)}")
        data = data["promotion"] or {}
    try:
        return PromotionConfig.model_validate(data)
    except ValidationError as exc:
        raise PromotionConfigError(_format_error(exc, source)) from None


def load_promotion_config(path: str | Path | None) -> PromotionConfig:
    """Load and validate; ``None`` gives the defaults."""
    if path is None:
        return PromotionConfig()
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as exc:
        raise PromotionConfigError(f"{p}: cannot read: {exc}") from None
    except yaml.YAMLError as exc:
        raise PromotionConfigError(f"{p}: invalid YAML: {exc}") from None
    return parse_promotion_config(data, str(p))
