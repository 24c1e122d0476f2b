"""The promotion policy (policy as code): which metrics matter, gates and their thresholds.

Loaded from YAML (``configs/policy.yaml``, top-level key ``policy``) and validated like the
router config: an unknown key or a bad value is a :class:`~router.config.ConfigError` naming the
file and the key. Every field has a documented default, so ``Policy()`` is a usable policy.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from router.config import ConfigError, format_validation_error


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MetricSpec(_Strict):
    """How one outcome metric is analysed."""

    type: Literal["proportion", "mean"] = "mean"
    per: Literal["unit", "request"] = Field(
        default="unit", description="analysis unit: the randomisation unit or each request"
    )
    agg: Literal["max", "sum", "mean"] | None = Field(
        default=None, description="per-unit reduction; default max for proportions, sum for means"
    )
    missing: Literal["zero", "exclude"] | None = Field(
        default=None, description="exposed without outcome; default zero unless agg is mean"
    )
    higher_is_better: bool = True
    role: Literal["goal", "guardrail", "monitor"] = Field(
        default="monitor",
        description="goal: must improve (by min_uplift); guardrail: must not be worse than "
        "margin (one-sided, always valid; a significant breach rolls back); monitor: reported "
        "only. The primary metric is a goal whatever its role here",
    )
    min_uplift: float = Field(default=0.0, ge=0, description="goal: the improvement needed")
    margin: float = Field(
        default=0.0, ge=0, description="guardrail: the non-inferiority margin (0: no worse)"
    )
    relative: bool = Field(
        default=False, description="min_uplift and margin are relative to the champion's mean"
    )
    cap: float | None = Field(
        default=None, description="winsorize each unit's value at this fixed upper cap"
    )
    cap_percentile: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="winsorize each unit's value at this percentile of the pooled values of both "
        "arms (e.g. 0.99), for heavy-tailed metrics such as revenue",
    )

    @model_validator(mode="after")
    def _one_cap(self) -> MetricSpec:
        if self.cap is not None and self.cap_percentile is not None:
            raise ValueError("cap and cap_percentile are exclusive: give one")
        return self

    @property
    def reduce(self) -> str:
        return self.agg or ("max" if self.type == "proportion" else "sum")

    @property
    def missing_as_zero(self) -> bool:
        if self.missing is not None:
            return self.missing == "zero"
        return self.reduce != "mean"


class PrimaryMetric(_Strict):
    name: str
    min_uplift: float = Field(default=0.0, description="required lower bound of the uplift")
    relative: bool = Field(default=False, description="min_uplift is relative (0.02 = +2%)")
    alpha: float = Field(default=0.05, gt=0, lt=1)
    mde: float | None = Field(
        default=None, gt=0, description="effect to size the test for (same scale as min_uplift)"
    )


class SRMPolicy(_Strict):
    alpha: float = Field(default=0.001, gt=0, lt=1)
    min_share_diff: float = Field(default=0.001, ge=0, lt=1)
    by_segment: bool = Field(default=True, description="also test every segment value (Holm)")
    min_segment_units: int = Field(
        default=100, ge=1, description="units a segment value needs to be tested"
    )


class Guardrails(_Strict):
    max_latency_p95_ms: float | None = Field(default=None, gt=0)
    max_latency_regression_ms: float | None = Field(default=50.0, ge=0)
    max_error_rate_delta: float | None = Field(default=0.01, ge=0)
    max_psi: float | None = Field(default=0.25, gt=0)
    max_input_psi: float | None = Field(default=None, gt=0)
    max_drifted_share: float | None = Field(
        default=None,
        ge=0,
        lt=1,
        description="share of captured input fields drifted by their size-chosen test (policy "
        "drift) above which the input_drift gate holds",
    )
    max_segment_gap: float | None = Field(default=0.1, gt=0)
    min_disparity_ratio: float | None = Field(default=0.8, gt=0, le=1)
    max_contract_break_share: float | None = Field(default=0.01, ge=0, le=1)
    max_accuracy_drop: float | None = Field(
        default=0.02,
        ge=0,
        le=1,
        description="label-joined accuracy, challenger vs champion (not evaluable without labels)",
    )
    max_rmse_increase: float | None = Field(
        default=0.05, ge=0, description="relative, for value predictions"
    )


DEFAULT_REFUSALS = (
    r"\bI'?m sorry,? but I (can(no|')t|am unable|won'?t)",
    r"\bI (cannot|can'?t|won'?t) (help|assist|comply)",
    r"\bas an AI( language model)?\b",
)


DivergenceMeasure = Literal[
    "flip_rate", "mean_abs_diff", "rmse", "rank_decorrelation", "disagreement", "mean_js_distance"
]


class DivergenceLimit(_Strict):
    """A divergence gate on one measure of the challenger's predictions against the champion's
    (same requests): an absolute ``max``, and/or ``max_noise_multiple`` = at most k times the
    champion's own divergence from itself (the noise floor, ``experiment.noise_floor``)."""

    max: float | None = Field(default=None, ge=0)
    max_noise_multiple: float | None = Field(default=None, gt=0)
    min_noise_pairs: int = Field(
        default=100, ge=1, description="noise-floor pairs needed before the relative gate judges"
    )


class DivergencePolicy(_Strict):
    thresholds: list[float] = Field(default_factory=lambda: [0.5])
    limits: dict[DivergenceMeasure, DivergenceLimit] = Field(
        default_factory=dict,
        description="divergence gates by measure (flip_rate at the first threshold, "
        "mean_abs_diff, rmse, rank_decorrelation = 1 - Spearman, disagreement = 1 - agreement, "
        "mean_js_distance); a failing one holds",
    )
    psi_bins: int = Field(default=10, ge=2, le=100)
    sample_size: int = Field(default=50_000, ge=100, description="hash sample for KS, AUC, ...")
    contract_noise_share: float = Field(default=0.0003, ge=0, le=1)
    positive_class: str | None = None
    refusal_patterns: list[str] = Field(
        default_factory=lambda: list(DEFAULT_REFUSALS),
        description="text predictions: a text matching any (case-insensitive regex) is a refusal",
    )
    text_examples: int = Field(default=5, ge=0, le=100, description="most different text pairs")
    text_example_chars: int = Field(
        default=200, ge=0, le=10_000, description="characters kept of each example text"
    )
    text_example_mode: Literal["text", "hash", "omit"] = Field(
        default="text",
        description="what the report shows of example texts: the text, a SHA-256 prefix, nothing",
    )

    @field_validator("refusal_patterns")
    @classmethod
    def _check_patterns(cls, v: list[str]) -> list[str]:
        for p in v:
            try:
                re.compile(p)
            except re.error as exc:
                raise ValueError(f"bad regular expression {p!r}: {exc}") from None
        return v


class SequentialPolicy(_Strict):
    tau: float = Field(
        default=0.1,
        gt=0,
        description="spread of the always-valid tests' mixtures, in SDs of one observation: the "
        "mSPRT's tau is this times the metric's pooled SD; the beta mixtures (sample ratio, "
        "quantiles) use a concentration of 1/tau^2 - 1",
    )


class SegmentPolicy(_Strict):
    min_n: int = Field(default=100, ge=1, description="units or pairs for a segment to count")
    max_values: int = Field(default=50, ge=1, description="values shown per field in the report")
    max_tracked_values: int = Field(
        default=1000, ge=1, description="values tracked per field; the rest fold into 'other'"
    )
    max_fields: int = Field(
        default=20, ge=1, description="segment fields tracked; the rest fold into 'other'"
    )


class DriftPolicy(_Strict):
    """How drift is tested, by the reference's sample size (Evidently's defaults)."""

    small_n: int = Field(
        default=1000, ge=1, description="reference n at or below which a test (KS, chi-square) "
        "decides; above it a distance with a threshold (Wasserstein, Jensen-Shannon)",
    )  # fmt: skip
    alpha: float = Field(default=0.05, gt=0, lt=1, description="KS and chi-square p-value")
    wasserstein_threshold: float = Field(
        default=0.1, gt=0, description="Wasserstein distance / reference SD"
    )
    js_threshold: float = Field(default=0.1, gt=0, le=1, description="Jensen-Shannon distance")


class CupedPolicy(_Strict):
    """CUPED (regression adjustment by a pre-exposure covariate) of the outcome metrics."""

    enabled: bool = Field(default=True, description="report adjusted results beside unadjusted")
    history_s: float = Field(
        default=14 * 86_400.0,
        ge=0,
        description="pre-exposure window: a unit's own outcome rows of the metric (joined by "
        "unit) with ts in [first exposure - history_s, first exposure) form its covariate; "
        "from Redis the outcomes stream is also read this far before --since (bounded by the "
        "stream's retention); 0: no history (only the metrics named in covariates)",
    )
    covariates: dict[str, str] = Field(
        default_factory=dict,
        description="metric -> name of an outcome metric whose unit-joined rows carry the "
        "unit's pre-exposure value (any ts), instead of the metric's own history",
    )
    decide_on: Literal["unadjusted", "adjusted"] = Field(
        default="unadjusted",
        description="which result the primary-metric gate judges (adjusted falls back to "
        "unadjusted when the adjustment is not possible)",
    )


class DataQualityPolicy(_Strict):
    max_invalid_share: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="invalid records and reused request ids over all records read: hold above",
    )
    max_metrics: int = Field(
        default=256, ge=1, le=65_535, description="distinct outcome metric names analysed"
    )


class Policy(_Strict):
    min_samples: int = Field(default=1000, ge=1, description="per arm: pairs or units")
    alpha: float = Field(default=0.05, gt=0, lt=1)
    power: float = Field(default=0.8, gt=0, lt=1)
    srm: SRMPolicy = Field(default_factory=SRMPolicy)
    primary_metric: PrimaryMetric | None = None
    metrics: dict[str, MetricSpec] = Field(default_factory=dict)
    label_metric: str = "label"
    prediction_kind: Literal["score", "class", "vector", "value", "text"] | None = None
    guardrails: Guardrails = Field(default_factory=Guardrails)
    divergence: DivergencePolicy = Field(default_factory=DivergencePolicy)
    sequential: SequentialPolicy = Field(default_factory=SequentialPolicy)
    segments: SegmentPolicy = Field(default_factory=SegmentPolicy)
    data_quality: DataQualityPolicy = Field(default_factory=DataQualityPolicy)
    cuped: CupedPolicy = Field(default_factory=CupedPolicy)
    drift: DriftPolicy = Field(default_factory=DriftPolicy)
    bootstrap_resamples: int = Field(default=400, ge=0)
    seed: int = 20261122


def parse_policy(data: Any, source: str = "<policy>") -> Policy:
    if data is None:
        return Policy()
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: (top level): expected a mapping of keys")
    if set(data) == {"policy"}:
        data = data["policy"] or {}
    try:
        return Policy.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(source, err)) from None


def load_policy(path: str | os.PathLike[str] | None) -> Policy:
    if path is None:
        return Policy()
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{p}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    return parse_policy(data, str(p))
