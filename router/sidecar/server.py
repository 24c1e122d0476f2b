"""Processes: run the router in one or several worker processes sharing one listening socket.

``router serve --workers N`` binds the socket once in the parent, initialises the shared live
state, starts the embedded Redis when configured, and forks N workers that each run an event loop
(uvloop) with the router's HTTP server (:mod:`router.sidecar.httpserver`) on the inherited
socket. The parent forwards SIGTERM / SIGINT, restarts a worker that dies unexpectedly, and exits
0 once every worker stopped cleanly. On SIGTERM the parent closes its copy of the listening
socket at once and each worker closes its own as its first step, so new connections are refused
(not queued and later reset) while in-flight requests drain.

A worker's clean stop: stop accepting, let in-flight requests finish (bounded), wait for shadow
calls (bounded), flush the capture queue to Redis, write its final metrics snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import os
import resource
import shutil
import signal
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from router.capture.redisproc import RedisProcess
from router.config import RouterConfig
from router.sidecar.app import PromotionView, RouterApp, initial_state
from router.sidecar.control import ControlFile
from router.sidecar.dispatch import handler_for
from router.sidecar.http_limits import HttpLimits
from router.sidecar.httpserver import HttpServer
from router.sidecar.tls import server_context

log = logging.getLogger("router.server")


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
    )


def install_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def tune_gc() -> None:
    """Keep cyclic-GC pauses off the latency tail.

    Everything allocated during start-up (modules, config, pools) is moved to the permanent
    generation (``gc.freeze``) so full collections no longer traverse it, and generation 0 is
    collected less often: per-request garbage is freed by reference counting anyway.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 1000)


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def start_redis(cfg: RouterConfig) -> tuple[str | None, RedisProcess | None]:
    """The capture Redis URL, starting the embedded redis-server when configured."""
    if not cfg.capture.enabled:
        return None, None
    if cfg.capture.redis != "embedded":
        return cfg.capture.redis, None
    proc = RedisProcess(Path(cfg.capture.data_dir) / "redis", appendonly=True)
    proc.start()
    (proc.data_dir / "url").write_text(proc.url)  # for `router export -c CONFIG`
    log.info("embedded redis-server (%s) at %s, data in %s", proc.binary, proc.url, proc.data_dir)
    return proc.url, proc


def fit_descriptors(max_connections: int, reserved: int) -> int:
    """Client connections this process can hold while upstream and Redis sockets still get
    descriptors: raises the soft RLIMIT_NOFILE towards the hard one when needed, and lowers
    ``max_connections`` (with a warning) when even that is too small."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = max_connections + reserved
    if soft == resource.RLIM_INFINITY or soft >= need:
        return max_connections
    target = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-files limit to %d: %s", target, exc)
    if soft >= need:
        return max_connections
    fitted = max(1, soft - reserved)
    log.warning(
        "limits.max_connections lowered from %d to %d: the open-files limit is %d and %d "
        "descriptors are kept for upstream pools, Redis and files", max_connections, fitted,
        soft, reserved,
    )  # fmt: skip
    return fitted


def http_limits(cfg: RouterConfig, reserved: int) -> HttpLimits:
    lim = cfg.limits
    return HttpLimits(
        max_body=lim.max_body,
        max_request_line=lim.max_request_line,
        max_header_bytes=lim.max_header_bytes,
        max_headers=lim.max_headers,
        header_timeout=lim.header_timeout_s,
        body_timeout=lim.body_timeout_s,
        keepalive_timeout=lim.keepalive_timeout_s,
        send_timeout=lim.send_timeout_s,
        max_connections=fit_descriptors(lim.max_connections, reserved),
        write_buffer_high=lim.write_buffer_bytes,
    )


class RunningRouter:
    """One worker's server inside an existing event loop (also used by tests and the demo)."""

    def __init__(
        self,
        cfg: RouterConfig,
        run_dir: str | Path,
        redis_url: str | None,
        *,
        initialise_control: bool = True,
        promotion_view: PromotionView | None = None,
    ) -> None:
        self.cfg = cfg
        self.app = RouterApp(cfg, run_dir, redis_url, promotion_view=promotion_view)
        self.initialise_control = initialise_control
        self.http = HttpServer(
            handler_for(self.app),
            limits=http_limits(cfg, self.app.descriptors_reserved()),
            on_refused=self.app.on_refused,
            on_event=self.app.on_event,
            ssl=server_context(cfg.listen_tls) if cfg.listen_tls is not None else None,
        )
        self.app.open_connections = lambda: len(self.http.connections)
        self.port: int | None = None

    async def start(self, sock: socket.socket | None = None) -> int:
        await self.app.start(initialise_control=self.initialise_control)
        if sock is None:
            sock = bind_socket(self.cfg.listen_host, self.cfg.listen_port)
        await self.http.start(sock)
        self.port = int(sock.getsockname()[1])
        return self.port

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (bounded), then drain shadow/capture."""
        await self.http.stop(self.cfg.limits.drain_timeout_s)
        await self.app.stop()


async def _worker_main(
    cfg: RouterConfig,
    sock: socket.socket,
    run_dir: str,
    redis_url: str | None,
    init: bool,
    promotion_view: PromotionView | None,
) -> None:
    router = RunningRouter(
        cfg, run_dir, redis_url, initialise_control=init, promotion_view=promotion_view
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await router.start(sock)
    tune_gc()
    log.info("worker ready on %s (pid %d)", cfg.listen, os.getpid())
    await stop.wait()
    log.info("worker stopping: draining in-flight, shadow and capture")
    await router.stop()
    log.info("worker stopped cleanly")


def run_worker(
    cfg: RouterConfig,
    sock: socket.socket,
    run_dir: str,
    redis_url: str | None,
    init: bool,
    promotion_view: PromotionView | None = None,
) -> None:
    install_uvloop()
    asyncio.run(_worker_main(cfg, sock, run_dir, redis_url, init, promotion_view))


def _child(
    cfg: RouterConfig,
    sock: socket.socket,
    run_dir: str,
    redis_url: str | None,
    level: str,
    promotion_view: PromotionView | None,
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; SIGTERM stops us
    setup_logging(level)
    run_worker(cfg, sock, run_dir, redis_url, False, promotion_view)


@dataclass
class _Supervisor:
    cfg: RouterConfig
    sock: socket.socket
    run_dir: str
    redis_url: str | None
    level: str
    promotion_view: PromotionView | None = None  # inherited by the forked workers
    stopping: bool = False

    def spawn(self) -> multiprocessing.process.BaseProcess:
        ctx = multiprocessing.get_context("fork")
        p = ctx.Process(
            target=_child,
            args=(
                self.cfg, self.sock, self.run_dir, self.redis_url, self.level, self.promotion_view
            ),
            daemon=False,
        )
        p.start()
        return p

    def run(self, workers: int) -> int:
        procs = [self.spawn() for _ in range(workers)]

        def on_signal(signum: int, _frame: Any) -> None:
            if not self.stopping:
                log.info("received %s: stopping %d workers", signal.Signals(signum).name, workers)
                # no worker will be started again: give up our copy of the listening socket so
                # that, once every worker closed its own, new connections are refused at once
                self.sock.close()
            self.stopping = True
            for p in procs:
                if p.is_alive() and p.pid:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(p.pid, signal.SIGTERM)

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        codes: dict[int, int] = {}
        while True:
            alive = False
            for i, p in enumerate(procs):
                p.join(timeout=0.1)
                if p.exitcode is None:
                    alive = True
                    continue
                if self.stopping:
                    codes[i] = p.exitcode
                    continue
                log.error("worker pid %s exited with %s; restarting it", p.pid, p.exitcode)
                time.sleep(0.5)
                procs[i] = self.spawn()
                alive = True
            if not alive:
                break
        bad = {i: c for i, c in codes.items() if c != 0}
        if bad:
            log.error("workers exited uncleanly: %s", bad)
            return 1
        return 0


def serve(
    cfg: RouterConfig,
    workers: int = 1,
    log_level: str = "INFO",
    promotion_view: PromotionView | None = None,
) -> int:
    """Run the router until SIGTERM / SIGINT; ``promotion_view`` answers the admin API's
    ``/promotion`` (see :data:`router.sidecar.app.PromotionView`)."""
    setup_logging(log_level)
    run_dir = tempfile.mkdtemp(prefix="shadow-router-")
    redis_url, redis_proc = start_redis(cfg)
    try:
        sock = bind_socket(cfg.listen_host, cfg.listen_port)
        ControlFile(run_dir).initialise(initial_state(cfg))
        log.info(
            "shadow-router listening on %s with %d worker(s); champion %s@%s, challengers %s",
            cfg.listen, workers, cfg.champion.version, cfg.champion.url,
            ", ".join(f"{c.name}={c.version}@{c.url} split={c.split:g} mirror={c.mirror:g}"
                      for c in cfg.challengers),
        )  # fmt: skip
        if workers <= 1:
            run_worker(cfg, sock, run_dir, redis_url, False, promotion_view)
            return 0
        return _Supervisor(cfg, sock, run_dir, redis_url, log_level, promotion_view).run(workers)
    finally:
        if redis_proc is not None:
            redis_proc.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
