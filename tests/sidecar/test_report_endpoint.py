"""The router serves the analyzer's report at <prefix>/report (token protected)."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import orjson

from router.demo.models import CHALLENGER_WEIGHTS, ModelServer, ModelSpec
from tests.helpers import TOKEN, InProcessRouter, config_dict, make_config, read_stream, wait_for


async def test_report_endpoint_serves_json_md_and_html(tmp_path: Path, redis_url: str) -> None:
    champion = await ModelServer(ModelSpec("champ-1")).start()
    challenger = await ModelServer(ModelSpec("chall-2", CHALLENGER_WEIGHTS)).start()
    cfg = make_config(
        config_dict(champion.url, challenger.url, redis_url, tmp=tmp_path, mirror=1.0, split=0.5)
    )
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        async with (
            InProcessRouter(cfg, tmp_path / "run", redis_url) as router,
            aiohttp.ClientSession() as s,
        ):
            for i in range(120):
                body = orjson.dumps({"user": {"id": f"u{i % 40}"}, "features": [i / 100, 0.2]})
                async with s.post(f"{router.url}/predict", data=body) as r:
                    assert r.status == 200
            assert await wait_for(lambda: len(read_stream(redis_url, "t:pairs")) == 120)
            base = f"{router.url}/_router/report?experiment=t"
            async with s.get(f"{base}&format=json") as r:
                assert r.status == 401  # token required
            async with s.get(f"{base}&format=json", headers=auth) as r:
                assert r.status == 200, await r.text()
                rep = await r.json()
            assert rep["experiment"] == "t"
            assert rep["counts"]["records"] == 120
            assert rep["counts"]["mirrored_pairs"] == 120
            assert rep["srm"]["split"] == 0.5  # the router passes its live split
            assert rep["decision"]["action"] in {"continue", "promote", "hold", "rollback"}
            async with s.get(f"{base}&format=md", headers=auth) as r:
                assert r.status == 200 and "## Gates" in await r.text()
            async with s.get(f"{base}&format=html", headers=auth) as r:
                assert r.status == 200 and "text/html" in r.headers["Content-Type"]
                assert "data:image/png;base64," in await r.text()
            async with s.get(f"{base}&format=pdf", headers=auth) as r:
                assert r.status == 400
            async with s.get(f"{router.url}/_router/report?experiment=../x", headers=auth) as r:
                assert r.status == 400
            # the analyzer refuses the window (exit 2): the caller's request, not a server fault
            async with s.get(f"{base}&since=2000000000&until=1900000000", headers=auth) as r:
                assert r.status == 422, await r.text()
                body = await r.json()
                assert body["error"] == "report refused"
                assert any("since" in line for line in body["detail"])
    finally:
        await champion.stop()
        await challenger.stop()


async def test_report_endpoint_passes_every_challengers_share(
    tmp_path: Path, redis_url: str
) -> None:
    """With several challengers the router passes ``--shares`` (each challenger's live split),
    so the A/B/n sample-ratio check across all arms runs instead of saying the shares are
    unknown."""
    from tests.sidecar.test_abn_proxy import _abn_config, _servers

    async with _servers("champion", "a", "b") as urls:
        cfg = _abn_config(urls, redis_url, tmp_path,
                          [{"name": "a", "split": 0.3}, {"name": "b", "split": 0.2}],
                          name="abn")  # fmt: skip
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with (
            InProcessRouter(cfg, tmp_path / "run", redis_url) as router,
            aiohttp.ClientSession() as s,
        ):
            for i in range(300):
                async with s.post(f"{router.url}/p", headers={"X-User-Id": f"u{i}"}) as r:
                    assert r.status == 200
            assert await wait_for(lambda: len(read_stream(redis_url, "abn:pairs")) == 300)
            async with s.get(f"{router.url}/_router/report?experiment=abn",
                             headers=auth) as r:  # fmt: skip
                assert r.status == 200, await r.text()
                rep = await r.json()
    srm = rep["arms"]["srm"]
    assert srm["shares"] == {"a": 0.3, "b": 0.2}
    assert srm["state"] == "ok" and not srm["mismatch"], srm
