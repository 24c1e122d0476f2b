"""The baseline a user would write: aiohttp web.Application + one ClientSession, shadow with
``asyncio.create_task``. ``python benchmarks/naive_proxy.py PORT UPSTREAM [SHADOW_UPSTREAM]``."""

from __future__ import annotations

import asyncio
import sys

import aiohttp
import uvloop
from aiohttp import web

HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


def make_app(upstream: str, shadow: str | None) -> web.Application:
    app = web.Application()
    tasks: set[asyncio.Task[None]] = set()

    async def on_startup(app: web.Application) -> None:
        app["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))

    async def on_cleanup(app: web.Application) -> None:
        await app["session"].close()

    async def mirror(session: aiohttp.ClientSession, method: str, path: str, headers: dict[str, str], body: bytes) -> None:  # noqa: E501
        try:
            async with session.request(method, shadow + path, headers=headers, data=body) as r:
                await r.read()
        except aiohttp.ClientError:
            pass

    async def handler(request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        session: aiohttp.ClientSession = request.app["session"]
        if shadow:
            t = asyncio.create_task(mirror(session, request.method, request.path_qs, headers, body))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
        async with session.request(
            request.method, upstream + request.path_qs, headers=headers, data=body
        ) as r:
            data = await r.read()
            out_headers = {k: v for k, v in r.headers.items() if k.lower() not in HOP}
            return web.Response(status=r.status, body=data, headers=out_headers)

    app.router.add_route("*", "/{tail:.*}", handler)
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


if __name__ == "__main__":
    port = int(sys.argv[1])
    up = sys.argv[2]
    sh = sys.argv[3] if len(sys.argv) > 3 else None
    uvloop.install()
    web.run_app(make_app(up, sh), host="127.0.0.1", port=port, access_log=None, print=None)
