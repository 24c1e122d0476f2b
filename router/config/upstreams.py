"""Upstreams: the champion's and each challenger's model server (URL, TLS, pool, timeouts)."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from router.config.base import ConfigError, _readable_file, _Strict


class UpstreamTLS(_Strict):
    """TLS to an ``https://`` upstream. Verification is on unless ``verify: false``."""

    verify: bool = Field(default=True, description="check the certificate chain and the name")
    ca_bundle: str | None = Field(
        default=None, description="PEM file of trusted CAs; default: the system's store"
    )
    client_cert: str | None = Field(default=None, description="PEM certificate for mTLS")
    client_key: str | None = Field(default=None, description="its key (default: in client_cert)")
    server_name: str | None = Field(
        default=None, description="SNI and the name the certificate must match; default: host"
    )

    _files = field_validator("ca_bundle", "client_cert", "client_key")(_readable_file)

    @model_validator(mode="after")
    def _key_needs_cert(self) -> UpstreamTLS:
        if self.client_key and not self.client_cert:
            raise ValueError("client_key needs client_cert")
        return self


class UpstreamConfig(_Strict):
    """One model server (champion or challenger)."""

    url: str
    version: str = Field(min_length=1, description="pinned model version label, never an alias")
    connect_timeout: float = Field(default=1.0, gt=0, description="seconds")
    timeout: float = Field(
        default=5.0, gt=0,
        description="seconds for the whole exchange (up to the headers of a streamed answer)",
    )  # fmt: skip
    pool_size: int = Field(default=64, ge=1, le=4096, description="max keep-alive connections")
    read_timeout: float | None = Field(
        default=None, gt=0,
        description="seconds between two reads of a streamed answer; default: timeout",
    )  # fmt: skip
    stream_max_duration: float = Field(
        default=600.0, gt=0, description="seconds a streamed answer may last in all"
    )
    tls: UpstreamTLS = Field(default_factory=UpstreamTLS)
    headers: dict[str, str] = Field(
        default_factory=dict,
        description="added to every request to this upstream (replacing the client's); never "
        "captured",
    )
    headers_from_env: dict[str, str] = Field(
        default_factory=dict,
        description="header name -> environment variable holding its value (API keys)",
    )

    @field_validator("headers", "headers_from_env")
    @classmethod
    def _check_header_names(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            if not name or not name.isascii() or any(c in name for c in " :\r\n\t"):
                raise ValueError(f"bad header name {name!r}")
            if name.lower() in ("host", "content-length", "transfer-encoding", "connection"):
                raise ValueError(f"header {name!r} is set by the router")
            if any(c in value for c in "\r\n"):
                raise ValueError(f"header {name!r}: value may not contain a line break")
        return v

    def upstream_headers(self) -> list[tuple[bytes, bytes]]:
        """``headers`` plus ``headers_from_env`` resolved now; raises ConfigError naming the
        variable when one is unset."""
        out = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in self.headers.items()]
        for name, env in self.headers_from_env.items():
            value = os.environ.get(env)
            if value is None:
                raise ConfigError(f"headers_from_env.{name}: environment variable {env} is unset")
            out.append((name.encode("latin-1"), value.strip().encode("latin-1")))
        return out

    @property
    def is_tls(self) -> bool:
        return urlsplit(self.url).scheme == "https"
    mirror_max_rps: float | None = Field(
        default=None,
        gt=0,
        description="shadow budget: mirrored requests per second this model takes from one "
        "worker (a fleet takes at most workers x replicas x this); unset: no budget",
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"must be an http:// or https:// URL (got {v!r})")
        if not parts.hostname:
            raise ValueError(f"has no host (got {v!r})")
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError as exc:
            raise ValueError(f"has a bad port (got {v!r})") from exc
        return v.rstrip("/")

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (443 if parts.scheme == "https" else 80)

    @property
    def base_path(self) -> str:
        return urlsplit(self.url).path.rstrip("/")


VARIANT_NAME = r"^[A-Za-z0-9_.\-]+$"


class ChallengerConfig(UpstreamConfig):
    """One challenger of an A/B/n experiment: its model server and its shares.

    ``split``: the fraction of units it serves; ``mirror``: the fraction of units whose
    champion-served requests are also sent to it as a shadow (and, when it serves, whose
    requests are also sent to the champion). The shorthand ``challenger:`` is a one-element list
    named ``challenger`` whose shares are ``experiment.split`` and ``experiment.mirror``."""

    name: str = Field(default="challenger", min_length=1, max_length=64, pattern=VARIANT_NAME)
    split: float = Field(default=0.0, ge=0.0, le=1.0)
    mirror: float = Field(default=0.0, ge=0.0, le=1.0)

    @field_validator("name")
    @classmethod
    def _not_champion(cls, v: str) -> str:
        if v == "champion":
            raise ValueError("'champion' is the name of the champion, not of a challenger")
        return v


def check_challengers(challengers: list[ChallengerConfig]) -> None:
    """The rules every set of challengers obeys (config file and admin API alike): at least
    one, names unique, split shares summing to at most 1. Raises ``ValueError`` naming the
    offending ``challengers[i].field``."""
    if not challengers:
        raise ValueError("challengers: at least one challenger is needed")
    seen: dict[str, int] = {}
    for i, c in enumerate(challengers):
        if c.name in seen:
            raise ValueError(
                f"challengers[{i}].name: {c.name!r} is already the name of challengers"
                f"[{seen[c.name]}]"
            )
        seen[c.name] = i
    total = 0
    for i, c in enumerate(challengers):
        total += round(c.split * 10_000)
        if total > 10_000:
            raise ValueError(
                f"challengers[{i}].split: the split shares sum to "
                f"{sum(x.split for x in challengers):g}, over 1"
            )
