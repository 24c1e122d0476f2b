"""Fixtures for archive tests: records in Redis at chosen stream times, an S3 server."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
import redis

from router.demo.synth import SynthSpec, generate

HOUR_MS = 3_600_000
# 2026-11-29T10:00:00Z: stream times in the past, so hours are complete and retention can act
T0_MS = 1_796_205_600_000 - 3 * 24 * HOUR_MS


@dataclass
class Filled:
    pairs: int
    outcomes: int
    pair_ids: list[str]


def fill(
    client: redis.Redis, experiment: str = "e", n: int = 3000, *, start_ms: int = T0_MS,
    step_ms: int = 2_000, outcome_delay_ms: int = 24 * HOUR_MS, shards: int = 0,
    extra: list[bytes] | None = None, seed: int = 1, uplift: float = 0.02,
) -> Filled:  # fmt: skip
    """Synthetic records (DESIGN.md schema) XADDed with explicit ids ``start_ms + i*step_ms``
    (so they land in chosen hours), their outcomes ``outcome_delay_ms`` later, then
    ``extra`` payloads (invalid entries) after the last record."""
    pipe = client.pipeline()
    ids: list[str] = []
    outs: list[tuple[int, bytes]] = []
    i = 0
    spec = SynthSpec(experiment=experiment, n=n, seed=seed, units=max(50, n // 10),
                     conversion_uplift=uplift, start=start_ms / 1000, rate=1000 / step_ms)
    for i, (rec, rows) in enumerate(generate(spec)):
        ms = start_ms + i * step_ms
        key = f"{experiment}:pairs" if not shards else f"{experiment}:pairs:{i % shards}"
        pipe.xadd(key, {"r": orjson.dumps(rec)}, id=f"{ms}-0")
        ids.append(f"{ms}-0")
        outs.extend((ms + outcome_delay_ms, orjson.dumps(o)) for o in rows)
    last = start_ms + i * step_ms
    for j, payload in enumerate(extra or []):
        key = f"{experiment}:pairs" if not shards else f"{experiment}:pairs:0"
        pipe.xadd(key, {"r": payload}, id=f"{last + 1}-{j}")
        ids.append(f"{last + 1}-{j}")
    outs.sort(key=lambda x: x[0])
    seq: dict[int, int] = {}
    for ms, payload in outs:
        s = seq.get(ms, 0)
        seq[ms] = s + 1
        pipe.xadd(f"{experiment}:outcomes", {"r": payload}, id=f"{ms}-{s}")
    pipe.execute()
    return Filled(len(ids), len(outs), ids)


BAD_ENTRIES = [
    b"not json",
    orjson.dumps({"v": 1, "request_id": "bad-ts", "ts": "yesterday", "served": "champion"}),
    orjson.dumps([1, 2, 3]),
]


@pytest.fixture(scope="session")
def s3_server() -> Iterator[dict[str, Any]]:
    """moto's standalone S3 server on a free port, over HTTP, with a bucket ``archive``."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}  # fmt: skip
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    boto3.client("s3", endpoint_url=f"http://{host}:{port}").create_bucket(Bucket="archive")
    try:
        yield {"endpoint": f"{host}:{port}", "env": env}
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def s3_uri(server: dict[str, Any], bucket: str, prefix: str) -> str:
    return (f"s3://{bucket}/{prefix}?endpoint_override={server['endpoint']}&scheme=http"
            "&region=us-east-1")  # fmt: skip
