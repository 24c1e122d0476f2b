"""Test helpers: real upstream apps on free ports, routers in-process or as `router serve`."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import redis
import yaml
from aiohttp import web

from router.config import RouterConfig, parse_config
from router.netutil import free_port
from router.sidecar.app import PromotionView
from router.sidecar.server import RunningRouter

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "test-admin-token"


def config_dict(
    champion: str,
    challenger: str,
    redis_url: str | None,
    *,
    tmp: Path,
    listen: str = "127.0.0.1:0",
    **experiment: Any,
) -> dict[str, Any]:
    exp: dict[str, Any] = {
        "name": "t",
        "salt": "test-salt",
        "unit": {"header": "X-User-Id", "json_path": "user.id"},
        "split": 0.0,
        "mirror": 0.0,
        "prediction_path": "score",
    }
    exp.update(experiment)
    return {
        "listen": listen,
        "champion": {"url": champion, "version": "champ-1", "timeout": 2.0},
        "challenger": {"url": challenger, "version": "chall-2", "timeout": 2.0},
        "experiment": exp,
        "capture": {
            "enabled": redis_url is not None,
            "redis": redis_url or "embedded",
            "data_dir": str(tmp / "data"),
            "batch_interval_ms": 10,
        },
        "admin": {"prefix": "/_router", "token_env": "ROUTER_TEST_TOKEN"},
        "limits": {"max_body": 65536, "mirror_max_body": 4096, "drain_timeout_s": 5.0},
        "guard": {"enabled": True, "window_s": 2, "min_requests": 20, "recover_after_s": 1.0},
    }


def make_config(d: dict[str, Any]) -> RouterConfig:
    return parse_config(d, "test")


class InProcessRouter:
    def __init__(
        self,
        cfg: RouterConfig,
        run_dir: Path,
        redis_url: str | None,
        promotion_view: PromotionView | None = None,
    ) -> None:
        self.router = RunningRouter(cfg, run_dir, redis_url, promotion_view=promotion_view)
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def app(self) -> Any:
        return self.router.app

    async def __aenter__(self) -> InProcessRouter:
        os.environ["ROUTER_TEST_TOKEN"] = TOKEN
        self.port = await self.router.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.router.stop()


async def start_app(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


def echo_app(name: str = "echo", delay: float = 0.0, status: int = 200) -> web.Application:
    """Answers with what it received, so forwarding can be checked exactly."""

    async def handler(request: web.Request) -> web.Response:
        if delay:
            await asyncio.sleep(delay)
        body = await request.read()
        doc = {
            "name": name,
            "method": request.method,
            "path_qs": request.path_qs,
            "headers": [[k, v] for k, v in request.headers.items()],
            "body": body.decode("latin-1"),
            "score": 0.25 if name == "champion" else 0.75,
        }
        return web.Response(
            status=status,
            body=orjson.dumps(doc),
            content_type="application/json",
            headers={"X-Upstream": name, "Set-Cookie": "a=b"},
        )

    app = web.Application(client_max_size=10 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


def read_stream(redis_url: str, key: str) -> list[dict[str, Any]]:
    client = redis.Redis.from_url(redis_url)
    try:
        return [orjson.loads(fields[b"r"]) for _id, fields in client.xrange(key)]
    finally:
        client.close()


async def wait_for(
    predicate: Callable[[], bool | Awaitable[bool]], timeout: float = 5.0, step: float = 0.02
) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = predicate()
        if not isinstance(r, bool):
            r = await r
        if r:
            return True
        await asyncio.sleep(step)
    return False


def parse_metrics(text: str) -> dict[str, float]:
    """``{'name{labels}': value}`` from Prometheus text."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        out[key] = float(value)
    return out


def metric_sum(metrics: dict[str, float], name: str, **labels: str) -> float:
    total = 0.0
    for key, v in metrics.items():
        base, _, lab = key.partition("{")
        if base != name:
            continue
        if all(f'{k}="{val}"' in lab for k, val in labels.items()):
            total += v
    return total


class ServeProcess:
    """`router serve -c FILE --workers N` as a real subprocess."""

    def __init__(self, cfg: dict[str, Any], tmp: Path, workers: int = 1) -> None:
        self.port = free_port()
        cfg = dict(cfg, listen=f"127.0.0.1:{self.port}")
        self.path = tmp / f"router-{self.port}.yaml"
        self.path.write_text(yaml.safe_dump(cfg))
        self.workers = workers
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tmp / f"router-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(
        self, timeout: float = 20.0, preexec: Callable[[], None] | None = None
    ) -> ServeProcess:
        env = dict(os.environ, ROUTER_TEST_TOKEN=TOKEN)
        self._logf = open(self.log, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "router", "serve", "-c", str(self.path),
             "--workers", str(self.workers)],
            stdout=self._logf, stderr=subprocess.STDOUT, env=env, cwd=ROOT, preexec_fn=preexec,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"router exited: {self.log.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    pass
                if self.log.read_text().count("worker ready") >= self.workers:
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"router did not start: {self.log.read_text()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._logf.close()
        return code


async def get_json(
    session: aiohttp.ClientSession, url: str, token: str | None = TOKEN
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with session.get(url, headers=headers) as r:
        return r.status, await r.json()
