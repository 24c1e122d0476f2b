"""The operational sections: capture, admin, limits, guard, control, archive, listener TLS."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from router.config.base import _parse_hostport, _readable_file, _Strict
from router.config.redis_url import parse_redis_url


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
    max_challengers: int = Field(
        default=4, ge=1, le=64,
        description="challengers a worker can hold: file descriptors for this many challengers' "
        "pools are reserved at start, so a live add beyond it is refused",
    )  # fmt: skip
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
