"""Router configuration: the YAML contract of DESIGN.md, validated with pydantic.

Every model forbids unknown keys, so a typo fails loudly. ``load_config`` turns any
validation problem into a :class:`ConfigError` whose message is one line naming the file,
the dotted key and the problem, e.g.::

    configs/router.yaml: experiment.split: Input should be less than or equal to 1

The reference with every key, its default and an example lives in README.md
("Configuration reference") and ``configs/router.yaml``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(Exception):
    """Invalid configuration; ``str(err)`` is a single line naming file, key and problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, validate_assignment=True)


def _parse_hostport(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not (0 <= int(port) <= 65535):
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return (host.strip("[]") or "0.0.0.0"), int(port)


def _readable_file(v: str | None) -> str | None:
    if v is not None and not os.access(v, os.R_OK):
        raise ValueError(f"cannot read file {v!r}")
    return v


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


REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster")


@dataclass(frozen=True, slots=True)
class RedisURL:
    """A parsed ``capture.redis`` URL (see :func:`parse_redis_url`)."""

    url: str  # as written
    scheme: str  # redis | rediss | unix (without "+cluster")
    cluster: bool
    seeds: tuple[tuple[str, int], ...]  # every host:port of the URL (one unless a cluster)

    def node_url(self, index: int = 0) -> str:
        """The URL with only seed ``index`` as its host, for redis-py's ``from_url`` (which
        takes one host): same scheme (without ``+cluster``), credentials, path and query."""
        if self.scheme == "unix":
            return self.url
        parts = urlsplit(self.url)
        userinfo = parts.netloc.rpartition("@")[0]
        host, port = self.seeds[index]
        hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        netloc = f"{userinfo}@{hostport}" if userinfo else hostport
        return urlunsplit(parts._replace(scheme=self.scheme, netloc=netloc))


def parse_redis_url(url: str) -> RedisURL:
    """Parse a Redis URL: ``redis://[user:password@]host[:port][/db][?options]``,
    ``rediss://`` (TLS), ``unix:///path``, or a cluster ``redis+cluster://`` /
    ``rediss+cluster://`` with one or several seed nodes separated by commas
    (``redis+cluster://user:pw@h1:7000,h2:7000,[::1]:7001``; a port defaults to 6379).

    The one parser of Redis URLs: the config, the capture writer and every reader (analyzer,
    export, controller) go through it. Raises ``ValueError`` with a one-line reason."""
    parts = urlsplit(url)
    raw_scheme = parts.scheme.lower()
    if raw_scheme not in REDIS_SCHEMES:
        raise ValueError(f"must be 'embedded' or a redis://, rediss://, unix://, "
                         f"redis+cluster:// URL (got {url!r})")  # fmt: skip
    cluster = raw_scheme.endswith("+cluster")
    scheme = raw_scheme.removesuffix("+cluster")
    if scheme == "unix":
        if not parts.path:
            raise ValueError(f"a unix:// URL needs a socket path (got {url!r})")
        return RedisURL(url, scheme, False, ())
    hosts = parts.netloc.rpartition("@")[2]
    if not hosts:
        raise ValueError(f"no host in {url!r}")
    seeds = tuple(_parse_seed(h, url) for h in hosts.split(","))
    if len(seeds) > 1 and not cluster:
        raise ValueError(f"several hosts need a cluster URL ({scheme}+cluster://...), "
                         f"got {url!r}")  # fmt: skip
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"a seed node is listed twice in {url!r}")
    return RedisURL(url, scheme, cluster, seeds)


def _parse_seed(text: str, url: str) -> tuple[str, int]:
    if text.startswith("["):  # [ipv6]:port
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"bad host {text!r} in {url!r}")
        port_text = rest[1:]
    else:
        host, _, port_text = text.partition(":")
    if not host or any(ch in host for ch in " /?#[]"):
        raise ValueError(f"bad host {text!r} in {url!r}")
    if not port_text:
        return host, 6379
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"bad port in {text!r} of {url!r}: expected 1-65535")
    return host, int(port_text)


class CaptureConfig(_Strict):
    enabled: bool = True
    redis: str = Field(
        default="embedded",
        description="'embedded', redis://, rediss://, unix://, or redis+cluster://h1:p1,h2:p2",
    )
    data_dir: str = Field(default=".router-data", description="embedded Redis data and spool root")
    stream_maxlen: int | None = Field(default=1_000_000, ge=1)
    retention_s: float | None = Field(default=None, gt=0, description="trim by age (MINID)")
    batch_size: int = Field(default=500, ge=1, le=100_000)
    batch_interval_ms: float = Field(default=50.0, gt=0)
    spool_dir: str | None = None
    spool_max_bytes: int = Field(default=256 * 1024 * 1024, ge=0)
    fsync: Literal["always", "batch", "never"] = "batch"
    write_timeout_s: float = Field(
        default=2.0, gt=0, description="a Redis write slower than this fails over to the spool"
    )
    dedupe_ttl_s: int = Field(
        default=86_400, ge=60,
        description="lifetime of a writer's exactly-once mark after its last write to a stream",
    )
    pair_shards: int = Field(
        default=1, ge=1, le=256, description="pair streams per experiment (for a hot experiment)"
    )
    max_response_bytes: int = Field(
        default=1024 * 1024, ge=0,
        description="bytes of a streamed served answer kept for the record; the rest is passed "
        "on but not kept (the side is marked truncated)",
    )  # fmt: skip
    fields: list[str] = Field(default_factory=list, description="JSON body paths to keep")
    hash_fields: list[str] = Field(default_factory=list, description="paths kept only hashed")

    @field_validator("redis")
    @classmethod
    def _check_redis(cls, v: str) -> str:
        if v != "embedded":
            parse_redis_url(v)
        return v


class AdminConfig(_Strict):
    prefix: str = Field(default="/_router", pattern=r"^/[A-Za-z0-9_\-/]*[A-Za-z0-9_\-]$")
    token_env: str = "ROUTER_ADMIN_TOKEN"
    force_token_env: str | None = Field(
        default="ROUTER_FORCE_TOKEN",
        description="env var holding the token that lets a request force a variant",
    )
    outcomes_token_env: str | None = "ROUTER_OUTCOMES_TOKEN"
    policy: str | None = Field(
        default=None, description="policy file used by <prefix>/report (default policy if unset)"
    )
    report_timeout_s: float = Field(default=120.0, gt=0)
    outcomes_max_rows: int = Field(
        default=5_000,
        ge=1,
        le=1_000_000,
        description="rows per POST /outcomes; more rejected (5,000 rows of ~200 bytes fit the "
        "default limits.max_body of 1 MiB: raise both together)",
    )


class LimitsConfig(_Strict):
    """Bounds of the sidecar's HTTP edge. Where the issue that introduced a limit was silent, the
    default is nginx's or Envoy's (named in README.md, "Configuration reference")."""

    max_body: int = Field(default=1024 * 1024, ge=1, description="bytes; larger gets 413")
    mirror_max_body: int = Field(default=256 * 1024, ge=0, description="larger is not mirrored")
    capture_queue: int = Field(default=20_000, ge=1)
    shadow_queue: int = Field(default=2_000, ge=1)
    shadow_concurrency: int = Field(default=64, ge=1)
    drain_timeout_s: float = Field(default=10.0, ge=0)
    max_request_line: int = Field(
        default=8 * 1024, ge=64, le=1024 * 1024, description="bytes; a longer request line: 414"
    )
    max_header_bytes: int = Field(
        default=64 * 1024,
        ge=1024,
        le=16 * 1024 * 1024,
        description="bytes of request line + headers (and of a chunked body's framing and "
        "trailers); more: 431",
    )
    max_headers: int = Field(default=100, ge=1, le=10_000, description="header lines; more: 431")
    header_timeout_s: float = Field(
        default=30.0, gt=0, description="from accept (or the request's first byte) to its end"
    )
    body_timeout_s: float = Field(
        default=60.0, gt=0, description="longest pause between two reads of a request body"
    )
    keepalive_timeout_s: float = Field(
        default=75.0, gt=0, description="idle keep-alive connections are closed after this"
    )
    send_timeout_s: float = Field(
        default=60.0, gt=0, description="a client that reads none of its answers for this long"
    )
    max_connections: int = Field(
        default=1024, ge=1, le=1_000_000, description="client connections per worker; more: 503"
    )
    write_buffer_bytes: int = Field(
        default=1024 * 1024,
        ge=16 * 1024,
        description="per-connection write buffer high-water mark; reading pauses above it",
    )
    shadow_max_response_bytes: int = Field(
        default=1024 * 1024, ge=0, description="bytes of a shadow answer kept; the rest discarded"
    )
    buffer_response_bytes: int = Field(
        default=64 * 1024, ge=0,
        description="answers with a Content-Length up to this are buffered whole; longer, "
        "chunked, close-delimited and text/event-stream answers are streamed through",
    )  # fmt: skip
    stream_buffer_bytes: int = Field(
        default=64 * 1024, ge=1024,
        description="bytes of a streamed answer held before the client is ready; the upstream "
        "is not read above it",
    )  # fmt: skip

    @model_validator(mode="after")
    def _line_fits_head(self) -> LimitsConfig:
        if self.max_request_line > self.max_header_bytes:
            raise ValueError("max_request_line may not exceed max_header_bytes")
        return self


class GuardConfig(_Strict):
    """Shadow guard: throttle mirroring while the champion is unhealthy."""

    enabled: bool = True
    window_s: float = Field(default=10.0, gt=0)
    min_requests: int = Field(default=50, ge=1)
    max_p99_ms: float | None = Field(default=None, gt=0)
    max_error_rate: float | None = Field(default=0.05, ge=0, le=1)
    throttled_mirror: float = Field(default=0.0, ge=0, le=1, description="mirror multiplier")
    recover_after_s: float = Field(default=5.0, ge=0)


class ControlConfig(_Strict):
    """The fleet-wide live state (split, mirror, pins) in the capture Redis."""

    shared: bool = Field(
        default=True,
        description="follow the experiment's live state in the capture Redis (every replica "
        "applies every change); false, or capture disabled: per-process state from this file",
    )
    state_dir: str | None = Field(
        default=None, description="last known live state on local disk (default "
        "<capture.data_dir>/control)",
    )  # fmt: skip
    poll_interval_s: float = Field(default=0.5, gt=0, le=10)
    heartbeat_interval_s: float = Field(default=1.0, gt=0, le=60)
    redis_timeout_s: float = Field(default=1.0, gt=0, le=30)


class ArchiveConfig(_Strict):
    """``router archive``: the cold path from the capture streams to Parquet (README "Archive")."""

    uri: str | None = Field(
        default=None,
        description="directory or s3://bucket/prefix; default <capture.data_dir>/archive",
    )
    retention_days: float | None = Field(
        default=None, gt=0, description="delete hour partitions older than this; null keeps all"
    )
    group: str = Field(default="archiver", min_length=1, description="Redis consumer group")
    consumer: str | None = Field(
        default=None, min_length=1,
        description="this archiver's name in its group (stable across restarts); default: host",
    )
    read_count: int = Field(default=10_000, ge=1, le=1_000_000, description="entries per read")
    block_ms: int = Field(default=1000, ge=1, description="longest wait for new entries")
    max_buffer_records: int = Field(
        default=200_000, ge=1, description="entries held per stream before a file is written"
    )
    flush_interval_s: float = Field(
        default=60.0, gt=0, description="longest time an entry waits in memory before a file"
    )
    claim_idle_s: float = Field(
        default=600.0, gt=0,
        description="take over another archiver's unacknowledged entries after this long",
    )
    compression: Literal["zstd", "snappy", "gzip", "lz4", "none"] = "zstd"
    compression_level: int | None = None
    row_group_size: int = Field(default=131_072, ge=1024)
    metrics_listen: str | None = Field(
        default=None, description="HOST:PORT serving GET /metrics (Prometheus); off by default"
    )
    rollup_lateness_s: float = Field(
        default=21_600.0, ge=0,
        description="`router rollup` aggregates an hour this long after it ends (outcomes "
        "arriving later make `analyze --rollups` re-fold that hour)",
    )

    @model_validator(mode="after")
    def _claim_after_flush(self) -> ArchiveConfig:
        if self.claim_idle_s <= 2 * self.flush_interval_s:
            raise ValueError("claim_idle_s must be more than twice flush_interval_s (an "
                             "archiver's entries would be taken over while it still holds them)")
        if self.metrics_listen is not None:
            _parse_hostport(self.metrics_listen)
        return self


class ListenTLS(_Strict):
    """TLS on the sidecar's listener (when it is not only on localhost)."""

    cert: str = Field(description="PEM certificate chain")
    key: str = Field(description="PEM private key")

    _files = field_validator("cert", "key")(_readable_file)


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
