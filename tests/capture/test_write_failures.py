"""Issue 20, item 1: whatever a write raises, the batch is spooled and replayed exactly once.

The failure is a real exception class injected at the writer's real write seam
(``CaptureWriter._apply``, the call that runs the batch script); Redis, the spool, the probe and
the replay are real. Every exception class redis-py defines is tried (so a class added by a
later redis-py is covered too), plus the builtin ones a socket or a bug can raise.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
import redis.exceptions

from router.capture.batches import Group
from router.capture.records import FinalizeOptions
from router.capture.writer import CaptureWriter
from router.config import CaptureConfig
from router.metrics import Metrics
from tests.helpers import wait_for

REDIS_EXCEPTIONS = sorted(
    (c for _n, c in inspect.getmembers(redis.exceptions, inspect.isclass)
     if issubclass(c, Exception) and c.__module__ == redis.exceptions.__name__),
    key=lambda c: c.__name__,
)  # fmt: skip
OTHER_EXCEPTIONS: list[type[Exception]] = [
    TimeoutError, OSError, ConnectionResetError, BrokenPipeError, ValueError, RuntimeError,
    KeyError, AttributeError,
]  # fmt: skip


def _make(cls: type[Exception]) -> Exception:
    # "<slot> <host>:<port>" is what MovedError/AskError parse; any other class takes it as text
    return cls("3999 127.0.0.1:1")


class FailingWrites(CaptureWriter):
    """The real writer whose first ``failures`` batch-script calls raise ``exc`` instead."""

    def __init__(self, *args: Any, exc: Exception, failures: int) -> None:
        super().__init__(*args)
        self.exc = exc
        self.failures = failures

    async def _apply(self, groups: list[Group], replay: bool = False) -> list[int]:
        if self.failures > 0:
            self.failures -= 1
            raise self.exc
        return await super()._apply(groups, replay)


def _row(i: int) -> dict[str, Any]:
    return {"v": 1, "experiment": "t", "request_id": f"r{i:04d}", "unit": None,
            "metric": "click", "value": 1.0, "ts": 1700000000.0 + i}  # fmt: skip


def test_every_redis_exception_class_is_covered() -> None:
    names = {c.__name__ for c in REDIS_EXCEPTIONS}
    assert {"RedisClusterException", "ClusterDownError", "ConnectionError", "TimeoutError",
            "ResponseError", "MovedError", "AskError", "TryAgainError",
            "SlotNotCoveredError"} <= names  # fmt: skip
    assert len(REDIS_EXCEPTIONS) >= 30


@pytest.mark.parametrize("cls", REDIS_EXCEPTIONS + OTHER_EXCEPTIONS,
                         ids=lambda c: f"{c.__module__.split('.')[0]}.{c.__name__}")  # fmt: skip
async def test_item1_any_write_failure_is_spooled_and_replayed_exactly_once(
    cls: type[Exception], tmp_path: Path, redis_url: str
) -> None:
    cfg = CaptureConfig(redis=redis_url, data_dir=str(tmp_path), batch_size=40,
                        batch_interval_ms=5, write_timeout_s=0.5)  # fmt: skip
    m = Metrics()
    # two failures: the first live write, and then the first replay of the spool
    w = FailingWrites(cfg, redis_url, m, FinalizeOptions(), 10_000, exc=_make(cls), failures=2)
    await w.start()
    n = 100
    for i in range(n):
        assert w.submit_outcome(_row(i))
    c = redis.Redis.from_url(redis_url)
    try:
        assert await wait_for(lambda: c.xlen("t:outcomes") >= n, timeout=10), w.status()
        assert await wait_for(lambda: w.spool is not None and not w.spool.pending, timeout=5)
        await w.stop()
        ids = [orjson.loads(f[b"r"])["request_id"] for _i, f in c.xrange("t:outcomes")]
    finally:
        c.close()
    assert ids == [f"r{i:04d}" for i in range(n)]  # all of them, once, in order
    assert w.failures == 0
    spooled = m.counter_value("router_capture_spooled")
    assert spooled >= 40  # at least the batch whose write raised
    assert m.counter_value("router_capture_replayed") == spooled
    assert m.counter_value("router_capture_errors", (cls.__name__,)) == 2
    assert m.counter_value("router_capture_dropped") == 0
    assert w.healthy


async def test_item2_readiness_reports_spooling_then_a_full_spool_and_never_raises(
    tmp_path: Path,
) -> None:
    from router.netutil import free_port

    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens: Redis is down
    cfg = CaptureConfig(redis=dead, data_dir=str(tmp_path), batch_size=10, batch_interval_ms=5,
                        write_timeout_s=0.3, spool_max_bytes=4096)  # fmt: skip
    m = Metrics()
    w = CaptureWriter(cfg, dead, m, FinalizeOptions(), 10_000)
    await w.start()
    w.submit_outcome(_row(0))
    assert await wait_for(lambda: m.counter_value("router_capture_spooled") == 1, timeout=5)
    ready = await w.readiness()  # spooling with room, the probe at work: ready
    assert ready["ok"] and not ready["redis"] and ready["spooling"] and ready["recovering"]
    assert "ConnectionError" in ready["error"]
    for i in range(1, 200):
        w.submit_outcome(_row(i))
    assert await wait_for(lambda: m.counter_value("router_capture_dropped", ("spool_full",)) > 0,
                          timeout=5)  # fmt: skip
    ready = await w.readiness()  # records are being lost now: not ready, and it says why
    assert not ready["ok"] and not ready["spooling"] and ready["error"].startswith("spool full")
    await w.stop(timeout=1)
    ready = await w.readiness()
    assert not ready["ok"] and ready["error"] == "the capture writer is not running"
