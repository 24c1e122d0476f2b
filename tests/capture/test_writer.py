"""CaptureWriter against real redis-servers: crash mid-replay, spool full, retention, auth."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import redis

from router.capture.batches import WRITE_BATCH_LUA
from router.capture.clients import make_client
from router.capture.keys import outcomes_key
from router.capture.records import FinalizeOptions
from router.capture.redisproc import RedisProcess
from router.capture.spool import Spool
from router.capture.writer import CaptureWriter
from router.config import CaptureConfig, parse_config
from router.metrics import Metrics
from router.sidecar.server import start_redis
from tests.capture.conftest import OwnRedis
from tests.helpers import wait_for


def _cfg(url: str, tmp: Path, **kw: Any) -> CaptureConfig:
    base: dict[str, Any] = {
        "redis": url, "data_dir": str(tmp / "data"), "batch_size": 50,
        "batch_interval_ms": 5, "write_timeout_s": 0.5, "fsync": "batch",
    }  # fmt: skip
    base.update(kw)
    return CaptureConfig(**base)


def _writer(cfg: CaptureConfig, metrics: Metrics | None = None) -> CaptureWriter:
    return CaptureWriter(cfg, cfg.redis, metrics or Metrics(), FinalizeOptions(), 100_000)


def _row(i: int) -> dict[str, Any]:
    return {"v": 1, "experiment": "t", "request_id": f"r{i:05d}", "unit": None,
            "metric": "click", "value": 1.0, "ts": 1700000000.0 + i}  # fmt: skip


def _ids(url: str, key: str) -> list[str]:
    import orjson

    c = redis.Redis.from_url(url)
    try:
        return [orjson.loads(f[b"r"])["request_id"] for _i, f in c.xrange(key)]
    finally:
        c.close()


async def test_crash_between_redis_write_and_commit_replays_without_duplicates(
    tmp_path: Path, own_redis: OwnRedis
) -> None:
    cfg = _cfg(own_redis.url, tmp_path)
    m = Metrics()
    w1 = _writer(cfg, m)  # Redis is not running: everything goes to the spool
    await w1.start()
    for i in range(500):
        assert w1.submit_outcome(_row(i))
    assert await wait_for(lambda: m.counter_value("router_capture_spooled") == 500, timeout=10)
    await w1.stop(timeout=2)
    assert list((tmp_path / "data" / "spool").glob("*.seg"))

    own_redis.start()
    # the crash window: 200 entries are written to Redis but the replay offset is not committed
    spool = Spool(cfg.spool_dir or tmp_path / "data" / "spool", cfg.spool_max_bytes)
    spool.open()
    res = spool.read(200)
    groups = [(b.key, b.batch_id, b.payloads) for b in res.batches]
    w = _writer(cfg)
    w.client = make_client(own_redis.url)
    w._script = w.client.register_script(WRITE_BATCH_LUA)
    assert sum(await w._write(groups)) == 200
    await w.client.aclose()
    spool.close()  # "crash": no commit

    m3 = Metrics()
    w3 = _writer(cfg, m3)
    await w3.start()
    assert await wait_for(lambda: w3.spool is not None and not w3.spool.pending, timeout=10)
    await w3.stop()
    ids = _ids(own_redis.url, outcomes_key("t"))
    assert ids == [f"r{i:05d}" for i in range(500)]  # exactly once, in order
    assert m3.counter_value("router_capture_replay_duplicates") == 200
    assert m3.counter_value("router_capture_replayed") == 300
    assert not list((tmp_path / "data" / "spool").glob("*.seg"))


async def test_spool_full_drops_are_counted(tmp_path: Path, own_redis: OwnRedis) -> None:
    cfg = _cfg(own_redis.url, tmp_path, spool_max_bytes=8192)
    m = Metrics()
    w = _writer(cfg, m)
    await w.start()
    for i in range(300):
        w.submit_outcome(_row(i))

    def settled() -> bool:
        spooled = m.counter_value("router_capture_spooled")
        return spooled + m.counter_value("router_capture_dropped", ("spool_full",)) == 300

    assert await wait_for(settled, timeout=10)
    dropped = m.counter_value("router_capture_dropped", ("spool_full",))
    spooled = m.counter_value("router_capture_spooled")
    assert dropped > 0 and spooled > 0
    assert w.status()["spool_full"] and w.status()["spool_bytes"] <= 8192
    own_redis.start()
    assert await wait_for(lambda: len(_ids(own_redis.url, "t:outcomes")) == spooled, timeout=10)
    await w.stop()
    assert _ids(own_redis.url, "t:outcomes") == [f"r{i:05d}" for i in range(int(spooled))]


async def test_retention_by_age_trims_with_minid(tmp_path: Path, redis_url: str) -> None:
    cfg = _cfg(redis_url, tmp_path, retention_s=1.0, stream_maxlen=None)
    w = _writer(cfg)
    await w.start()
    for i in range(400):
        w.submit_outcome(_row(i))
    assert await wait_for(lambda: len(_ids(redis_url, "t:outcomes")) == 400, timeout=5)
    time.sleep(1.2)  # everything above is now older than retention_s
    w.submit_outcome(_row(400))
    c = redis.Redis.from_url(redis_url)
    assert await wait_for(lambda: c.xlen("t:outcomes") < 100, timeout=5)  # whole nodes trimmed
    first = c.xrange("t:outcomes", count=1)[0][0].decode()
    assert int(first.split("-")[0]) >= (time.time() - 2.5) * 1000
    c.close()
    await w.stop()


async def test_credentials_in_the_url(tmp_path: Path) -> None:
    own = OwnRedis(tmp_path / "auth-redis", ["--requirepass", "s3cret"]).start()
    try:
        url = f"redis://:s3cret@127.0.0.1:{own.port}/0"
        c = redis.Redis.from_url(url)
        c.execute_command("ACL", "SETUSER", "alice", "on", ">pw2", "~*", "+@all")
        for good in (url, f"redis://alice:pw2@127.0.0.1:{own.port}/0"):
            w = _writer(_cfg(good, tmp_path / good[-20:].replace("/", "_")))
            await w.start()
            w.submit_outcome(_row(1))
            assert await wait_for(lambda: c.xlen("t:outcomes") >= 1, timeout=5)
            await w.stop()
            assert w.healthy
            c.delete("t:outcomes")
        bad = _writer(_cfg(f"redis://:wrong@127.0.0.1:{own.port}/0", tmp_path / "bad"))
        await bad.start()
        bad.submit_outcome(_row(2))
        assert await wait_for(lambda: not bad.healthy, timeout=5)
        assert "auth" in (bad.last_error or "").lower() or "password" in (bad.last_error or "")
        await bad.stop(timeout=1)
        c.close()
    finally:
        own.stop()


def test_embedded_redis_is_append_only_on_loopback(tmp_path: Path) -> None:
    cfg = parse_config({
        "champion": {"url": "http://127.0.0.1:1", "version": "a"},
        "challenger": {"url": "http://127.0.0.1:2", "version": "b"},
        "experiment": {"name": "t", "salt": "s"},
        "capture": {"redis": "embedded", "data_dir": str(tmp_path / "d")},
    })  # fmt: skip
    url, proc = start_redis(cfg)
    assert isinstance(proc, RedisProcess) and url is not None
    try:
        assert url.startswith("redis://127.0.0.1:")
        c = redis.Redis.from_url(url)
        assert c.config_get("appendonly")["appendonly"] == "yes"
        assert c.config_get("dir")["dir"] == str((tmp_path / "d" / "redis").resolve())
        assert c.config_get("bind")["bind"] == "127.0.0.1"
        c.close()
    finally:
        proc.stop()


async def test_tls_rediss_url(tmp_path: Path) -> None:
    import shutil
    import socket
    import ssl
    import subprocess

    from router.capture.redisproc import find_redis_server
    from router.netutil import free_port

    openssl = shutil.which("openssl")
    if openssl is None:
        import pytest

        pytest.skip("openssl is not on PATH: cannot make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)  # fmt: skip
    port = free_port()
    args = ["--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
            "--tls-cert-file", str(cert), "--tls-key-file", str(key),
            "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no", "--save", "",
            "--dir", str(tmp_path)]  # fmt: skip
    binaries = [find_redis_server(prefer_path=True), find_redis_server(prefer_path=False)]
    binaries += [str(Path(d) / "redis-server") for d in os.get_exec_path()]
    proc = None
    for binary in dict.fromkeys(b for b in binaries if Path(b).exists()):
        p = subprocess.Popen([binary, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.3)
        if p.poll() is None:  # builds without TLS exit at once on --tls-port
            proc = p
            break
    if proc is None:
        import pytest

        pytest.skip("no redis-server built with TLS on this machine")
    try:
        ctx = ssl.create_default_context(cafile=str(cert))

        def up() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", port), 0.5) as s, \
                        ctx.wrap_socket(s, server_hostname="127.0.0.1"):  # fmt: skip
                    return True
            except OSError:
                return False

        assert await wait_for(up, timeout=10)
        url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}"
        m = Metrics()
        w = _writer(_cfg(url, tmp_path / "tls"), m)
        await w.start()
        w.submit_outcome(_row(7))
        assert await wait_for(lambda: m.counter_value("router_capture_written") == 1, timeout=5)
        await w.stop()
        assert w.healthy and m.counter_value("router_capture_spooled") == 0
        c = redis.Redis.from_url(url)
        assert c.xlen("t:outcomes") == 1
        c.close()
    finally:
        proc.terminate()
        proc.wait(10)


async def test_slow_redis_times_out_to_the_spool_and_nothing_is_doubled(
    tmp_path: Path, own_redis: OwnRedis
) -> None:
    """``DEBUG SLEEP`` freezes the real server: writes time out (but may still be applied once
    it wakes up, from its socket buffer); the spooled copies must not be added a second time."""
    import threading

    own_redis.start()
    cfg = _cfg(own_redis.url, tmp_path, write_timeout_s=0.3)
    m = Metrics()
    w = _writer(cfg, m)
    await w.start()
    for i in range(100):
        w.submit_outcome(_row(i))
    assert await wait_for(lambda: m.counter_value("router_capture_written") == 100, timeout=5)

    def freeze() -> None:
        with redis.Redis.from_url(own_redis.url, socket_timeout=10) as c:
            c.execute_command("DEBUG", "SLEEP", "1.5")

    t = threading.Thread(target=freeze)
    t.start()
    time.sleep(0.1)
    t0 = time.monotonic()
    for i in range(100, 400):
        w.submit_outcome(_row(i))
        if i % 50 == 0:
            await asyncio.sleep(0.05)
    hot_path = time.monotonic() - t0
    assert await wait_for(lambda: not w.healthy, timeout=3)
    t.join()
    assert await wait_for(lambda: len(_ids(own_redis.url, "t:outcomes")) >= 400, timeout=10)
    assert await wait_for(lambda: w.spool is not None and not w.spool.pending, timeout=10)
    await w.stop()
    assert _ids(own_redis.url, "t:outcomes") == [f"r{i:05d}" for i in range(400)]
    assert m.counter_value("router_capture_spooled") > 0
    assert m.counter_value("router_capture_errors") >= 1
    assert hot_path < 1.0  # submitting never waited for the frozen Redis


async def test_unusable_spool_dir_degrades_to_counted_drops(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    dead = f"redis://127.0.0.1:{_free()}/0"
    m = Metrics()
    w = _writer(_cfg(dead, tmp_path, spool_dir=str(blocker / "spool")), m)
    await w.start()  # the router still starts
    assert w.spool is None and w.status()["spool_enabled"] is False
    for i in range(10):
        w.submit_outcome(_row(i))
    assert await wait_for(lambda: m.counter_value("router_capture_dropped", ("no_spool",)) == 10)
    await w.stop(timeout=1)


def _free() -> int:
    from router.netutil import free_port

    return free_port()
