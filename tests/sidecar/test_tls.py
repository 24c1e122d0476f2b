"""HTTPS upstreams (and TLS on the listener) with certificates made for the test (trustme)."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web

from router.config import ConfigError
from router.demo.llm import TextModelServer, TextModelSpec, generate
from tests.helpers import InProcessRouter, config_dict, make_config, read_stream, wait_for

CHAT = {"messages": [{"role": "user", "content": "hello"}], "stream": True}


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def _server_ctx(ca: trustme.CA, name: str = "127.0.0.1", mtls: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(name).configure_cert(ctx)
    if mtls:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ca.configure_trust(ctx)
    return ctx


def _cfg(url: str, redis_url: str, tmp: Path, tls: dict[str, Any]) -> dict[str, Any]:
    d = config_dict(url, url, redis_url, tmp=tmp, prediction_kind="text",
                    prediction_format="openai", prediction_path=None)  # fmt: skip
    d["champion"]["tls"] = tls
    d["challenger"]["tls"] = tls
    return d


async def test_https_upstream_streams_with_pooled_tls(
    ca: trustme.CA, tmp_path: Path, redis_url: str
) -> None:
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    srv = await TextModelServer(TextModelSpec("champ-1"), ssl_context=_server_ctx(ca)).start()
    try:
        cfg = make_config(_cfg(srv.url, redis_url, tmp_path, {"ca_bundle": str(bundle)}))
        async with (
            InProcessRouter(cfg, tmp_path / "run", redis_url) as router,
            aiohttp.ClientSession() as s,
        ):
            for _ in range(3):
                async with s.post(f"{router.url}/v1/chat/completions", json=CHAT) as r:
                    assert r.status == 200
                    assert (await r.read()).rstrip().endswith(b"[DONE]")
            pool = router.app.pools["champion"]
            assert pool.idle == 1  # one TLS connection, kept alive and reused
            assert await wait_for(lambda: len(read_stream(redis_url, "t:pairs")) == 3)
    finally:
        await srv.stop()
    rec = read_stream(redis_url, "t:pairs")[0]
    assert rec["champion"]["prediction"] == generate(TextModelSpec("c"), "hello")


@pytest.mark.parametrize("case", ["untrusted", "wrong_name"])
async def test_wrong_certificate_is_a_clear_counted_502(
    case: str, ca: trustme.CA, tmp_path: Path, redis_url: str
) -> None:
    bundle = tmp_path / "ca.pem"
    if case == "untrusted":
        trustme.CA().cert_pem.write_to_path(str(bundle))  # another CA
        ctx = _server_ctx(ca)
    else:
        ca.cert_pem.write_to_path(str(bundle))
        ctx = _server_ctx(ca, name="model.example")  # not 127.0.0.1
    srv = await TextModelServer(TextModelSpec("champ-1"), ssl_context=ctx).start()
    try:
        cfg = make_config(_cfg(srv.url, redis_url, tmp_path, {"ca_bundle": str(bundle)}))
        async with (
            InProcessRouter(cfg, tmp_path / "run", redis_url) as router,
            aiohttp.ClientSession() as s,
        ):
            async with s.post(f"{router.url}/v1/chat/completions", json=CHAT) as r:
                assert r.status == 502
                doc = await r.json()
            assert "TLS handshake failed" in doc["detail"] and "CERTIFICATE_VERIFY_FAILED" in (
                doc["detail"]
            )
            m = router.app.metrics
            assert m.counter_value("router_upstream_errors", ("champion", "served", "tls")) == 1
            assert await wait_for(lambda: len(read_stream(redis_url, "t:pairs")) == 1)
    finally:
        await srv.stop()
    (rec,) = read_stream(redis_url, "t:pairs")
    assert rec["champion"]["error"].startswith("tls: TLS handshake failed")


async def test_mtls_server_name_and_api_key_header(
    ca: trustme.CA, tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    client = ca.issue_cert("router-client")
    cert = tmp_path / "client.pem"
    client.private_key_and_cert_chain_pem.write_to_path(str(cert))
    seen: list[dict[str, str]] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        return web.json_response({"score": 1.0, "client": bool(peer)})

    app = web.Application()
    app.router.add_post("/p", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=_server_ctx(ca, "model.internal", True))
    await site.start()
    port = runner.addresses[0][1]
    monkeypatch.setenv("TEST_MODEL_KEY", "sk-secret")
    try:
        d = config_dict(f"https://127.0.0.1:{port}", f"https://127.0.0.1:{port}", redis_url,
                        tmp=tmp_path)  # fmt: skip
        for side in ("champion", "challenger"):
            d[side]["tls"] = {"ca_bundle": str(bundle), "client_cert": str(cert),
                              "server_name": "model.internal"}  # fmt: skip
            d[side]["headers_from_env"] = {"Authorization": "TEST_MODEL_KEY"}
            d[side]["headers"] = {"X-Api-Version": "2"}
        cfg = make_config(d)
        async with (
            InProcessRouter(cfg, tmp_path / "run", redis_url) as router,
            aiohttp.ClientSession() as s,
        ):
            async with s.post(f"{router.url}/p", json={}, headers={"Authorization": "client"}) as r:
                assert r.status == 200 and (await r.json())["client"] is True
            assert await wait_for(lambda: len(read_stream(redis_url, "t:pairs")) == 1)
    finally:
        await runner.cleanup()
    assert seen[0]["Authorization"] == "sk-secret" and seen[0]["X-Api-Version"] == "2"
    raw = str(read_stream(redis_url, "t:pairs"))
    assert "sk-secret" not in raw  # never captured


async def test_listen_tls_and_config_errors(ca: trustme.CA, tmp_path: Path, redis_url: str) -> None:
    srv = await TextModelServer(TextModelSpec("champ-1")).start()
    key = ca.issue_cert("127.0.0.1")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    key.cert_chain_pems[0].write_to_path(str(cert_file))
    key.private_key_pem.write_to_path(str(key_file))
    try:
        d = config_dict(srv.url, srv.url, redis_url, tmp=tmp_path)
        d["listen_tls"] = {"cert": str(cert_file), "key": str(key_file)}
        cfg = make_config(d)
        client_ctx = ssl.create_default_context()
        ca.configure_trust(client_ctx)
        async with (
            InProcessRouter(cfg, tmp_path / "run", redis_url) as router,
            aiohttp.ClientSession() as s,
        ):
            url = f"https://127.0.0.1:{router.port}/v1/chat/completions"
            async with s.post(url, json=CHAT, ssl=client_ctx) as r:
                assert r.status == 200 and (await r.read()).rstrip().endswith(b"[DONE]")
    finally:
        await srv.stop()
    bad = config_dict(srv.url, srv.url, redis_url, tmp=tmp_path)
    bad["champion"]["tls"] = {"ca_bundle": str(tmp_path / "missing.pem")}
    with pytest.raises(ConfigError, match=r"champion.tls.ca_bundle: cannot read file"):
        make_config(bad)
    bad = config_dict("ftp://x:1", srv.url, redis_url, tmp=tmp_path)
    with pytest.raises(ConfigError, match=r"champion.url: must be an http:// or https:// URL"):
        make_config(bad)
