"""Router configuration: the YAML contract of DESIGN.md, validated with pydantic.

Every model forbids unknown keys, so a typo fails loudly. ``load_config`` turns any
validation problem into a :class:`ConfigError` whose message is one line naming the file,
the dotted key and the problem, e.g.::

    configs/router.yaml: experiment.split: Input should be less than or equal to 1

The reference with every key, its default and an example lives in README.md
("Configuration reference") and ``configs/router.yaml``.

The models live by part: :mod:`.base` (error, strict model), :mod:`.upstreams` (model servers),
:mod:`.experiment` (unit, shares, segments, contract), :mod:`.redis_url`, :mod:`.sections`
(capture, admin, limits, guard, control, archive, listener TLS); this module holds the whole
file's model and the loaders.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from router.config.base import ConfigError, _parse_hostport, _Strict
from router.config.experiment import ContractConfig, ExperimentConfig, SegmentField, UnitSource
from router.config.redis_url import RedisURL, parse_redis_url
from router.config.sections import (
    AdminConfig,
    ArchiveConfig,
    CaptureConfig,
    ControlConfig,
    GuardConfig,
    LimitsConfig,
    ListenTLS,
)
from router.config.upstreams import (
    ChallengerConfig,
    UpstreamConfig,
    UpstreamTLS,
    check_challengers,
)

__all__ = [
    "AdminConfig", "ArchiveConfig", "CaptureConfig", "ChallengerConfig", "ConfigError",
    "ContractConfig", "ControlConfig", "ExperimentConfig", "GuardConfig", "LimitsConfig",
    "ListenTLS", "RedisURL", "RouterConfig", "SegmentField", "UnitSource", "UpstreamConfig",
    "UpstreamTLS", "check_challengers", "format_validation_error", "load_config",
    "parse_config", "parse_redis_url",
]  # fmt: skip


class RouterConfig(_Strict):
    """The whole file. ``challenger:`` (one model, shares in ``experiment.split`` / ``.mirror``)
    is shorthand for a one-element ``challengers:`` list named ``challenger``; after validation
    ``challengers`` always holds every challenger, ``challenger`` is ``challengers[0]`` and
    ``experiment.split`` / ``.mirror`` are its shares (what single-challenger code reads)."""

    listen: str = "127.0.0.1:8080"
    listen_tls: ListenTLS | None = None
    champion: UpstreamConfig
    challenger: ChallengerConfig | None = None
    challengers: list[ChallengerConfig] = Field(default_factory=list)
    experiment: ExperimentConfig
    capture: CaptureConfig = Field(default_factory=CaptureConfig)
    admin: AdminConfig = Field(default_factory=AdminConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    guard: GuardConfig = Field(default_factory=GuardConfig)
    control: ControlConfig = Field(default_factory=ControlConfig)
    archive: ArchiveConfig = Field(default_factory=ArchiveConfig)

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, v: str) -> str:
        _parse_hostport(v)
        return v

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        one, many = data.get("challenger"), data.get("challengers")
        first = many[0] if isinstance(many, list) and many and isinstance(many[0], dict) else None
        if one is not None and many is not None:
            if one != first:  # (a dumped config repeats the first challenger: that is fine)
                raise ValueError(
                    "challenger: use either challenger: (one) or challengers: (a list)"
                )
            data = {k: v for k, v in data.items() if k != "challenger"}
        exp = data.get("experiment")
        if many is not None:
            if isinstance(exp, dict):
                for key in ("split", "mirror"):
                    if exp.get(key) and (first is None or exp[key] != first.get(key)):
                        raise ValueError(
                            f"experiment.{key}: with challengers: set {key} per challenger "
                            f"(challengers[i].{key})"
                        )
            return data
        if one is None:
            raise ValueError("challengers: required key is missing (or challenger:)")
        if isinstance(one, dict):
            if "name" in one or "split" in one or "mirror" in one:
                bad = next(k for k in ("name", "split", "mirror") if k in one)
                raise ValueError(
                    f"challenger.{bad}: the challenger: shorthand takes its shares from "
                    f"experiment.split/mirror; use challengers: for named challengers"
                )
            shares = {}
            if isinstance(exp, dict):
                # a bad share is left to experiment.split/mirror's own check, which names it
                shares = {
                    k: exp[k]
                    for k in ("split", "mirror")
                    if isinstance(exp.get(k), (int, float)) and 0 <= exp[k] <= 1
                }
            data = {k: v for k, v in data.items() if k != "challenger"}
            data["challengers"] = [{**one, **shares}]
        return data

    @model_validator(mode="after")
    def _check_challengers(self) -> RouterConfig:
        check_challengers(self.challengers)
        if len(self.challengers) > self.limits.max_challengers:
            raise ValueError(
                f"limits.max_challengers: {len(self.challengers)} challengers configured, at "
                f"most {self.limits.max_challengers}"
            )
        first = self.challengers[0]
        # plain assignment would re-run validation; these are derived views
        object.__setattr__(self, "challenger", first)
        object.__setattr__(self.experiment, "split", first.split)
        object.__setattr__(self.experiment, "mirror", first.mirror)
        if self.experiment.force_header is not None:
            forced = self.experiment.force_header.strip().lower()
            if not forced or forced == "host":
                raise ValueError("experiment.force_header: must be a header name, not Host")
        return self

    @property
    def first_challenger(self) -> ChallengerConfig:
        return self.challengers[0]

    def upstream(self, variant: str) -> UpstreamConfig:
        """The config of ``variant`` ("champion" or a challenger's name; "challenger" is
        the first challenger when no challenger has that name)."""
        if variant == "champion":
            return self.champion
        for c in self.challengers:
            if c.name == variant:
                return c
        if variant == "challenger":
            return self.challengers[0]
        raise KeyError(variant)

    @property
    def listen_host(self) -> str:
        return _parse_hostport(self.listen)[0]

    @property
    def listen_port(self) -> int:
        return _parse_hostport(self.listen)[1]


def _loc_to_key(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "(top level)"


def format_validation_error(source: str, err: ValidationError) -> str:
    first = err.errors()[0]
    key = _loc_to_key(tuple(first["loc"]))
    text = first["msg"].removeprefix("Value error, ")
    named = re.match(r"^([A-Za-z_][\w.\[\]]*): (.+)$", text)
    if first["type"] == "value_error" and named:  # a cross-field rule naming its own key
        prefix = "" if key == "(top level)" else key + "."
        key, first = prefix + named.group(1), {**first, "msg": named.group(2)}
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif first["type"] == "missing":
        msg = "required key is missing"
    else:
        msg = first["msg"].removeprefix("Value error, ")
    more = len(err.errors()) - 1
    suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    return f"{source}: {key}: {msg}{suffix}"


def parse_config(data: Any, source: str = "<config>") -> RouterConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: (top level): expected a mapping of keys")
    try:
        return RouterConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(source, err)) from None


def load_config(path: str | os.PathLike[str]) -> RouterConfig:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "?"
        raise ConfigError(f"{p}: {where}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    return parse_config(data, str(p))
