"""Fixtures for capture tests: a Redis of the test's own that it may kill and restart."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from router.capture.redisproc import RedisProcess
from router.netutil import free_port


class OwnRedis:
    """A throwaway redis-server on a fixed port with an append-only file, restartable."""

    def __init__(self, data_dir: Path, extra: list[str] | None = None) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.extra = extra or []
        self.proc: RedisProcess | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> OwnRedis:
        self.proc = RedisProcess(self.data_dir, port=self.port, prefer_path=True,
                                 appendonly=True, extra_args=self.extra,
                                 allow_debug=True).start()  # fmt: skip
        return self

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    r = OwnRedis(tmp_path / "own-redis", ["--appendfsync", "always"])
    try:
        yield r
    finally:
        r.stop()
