"""Shared fixtures: a throwaway redis-server per test session (never the machine's :6379)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis

from router.capture.redisproc import RedisProcess


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    """A real redis-server on a free loopback port, for the whole session."""
    proc = RedisProcess(tmp_path_factory.mktemp("redis"), prefer_path=True, appendonly=False)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def redis_url(redis_server: RedisProcess) -> Iterator[str]:
    """URL of the session Redis, flushed before each test that asks for it."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    yield redis_server.url


@pytest.fixture
def tmp_dir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
async def echo_pair() -> AsyncIterator[tuple[str, str]]:
    """Two real echo upstreams (champion, challenger) that answer with what they received."""
    from tests.helpers import echo_app, start_app

    r1, champ = await start_app(echo_app("champion"))
    r2, chall = await start_app(echo_app("challenger"))
    yield champ, chall
    await r1.cleanup()
    await r2.cleanup()
