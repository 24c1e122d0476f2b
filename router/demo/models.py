"""Small, real model servers for the demo, tests and benchmarks.

Each serves ``POST /predict`` with a logistic regression over the request's ``features``
(``{"user": {"id": …}, "features": [x0, x1, …]}`` → ``{"score": p, "label": 0|1, "model": v}``)
and ``GET /healthz``. Knobs for experiments: extra latency, an error rate, a response shape
change (to exercise the contract diff), and nondeterminism (``noise_sd``, ``stamp``: to
exercise the noise floor).
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import orjson
from aiohttp import web

# The "true" model used by the demo's synthetic world; the challenger is closer to it.
TRUE_WEIGHTS: tuple[float, ...] = (1.2, -0.8, 0.5, 0.3)
TRUE_BIAS = -0.2
CHAMPION_WEIGHTS: tuple[float, ...] = (0.7, -0.4, 0.9, 0.0)
CHALLENGER_WEIGHTS: tuple[float, ...] = (1.1, -0.7, 0.55, 0.25)


def sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


@dataclass
class ModelSpec:
    version: str
    weights: Sequence[float] = CHAMPION_WEIGHTS
    bias: float = TRUE_BIAS
    latency_s: float = 0.0
    error_rate: float = 0.0
    extra_field: bool = False
    seed: int = 0
    calls: int = 0
    shadow_calls: int = 0
    seen_headers: list[dict[str, str]] = field(default_factory=list)
    keep_headers: int = 0  # how many request header sets to remember (tests)
    # nondeterminism (sampling, GPU kernels, batch effects): N(0, noise_sd) added to the logit
    # on every call, and a per-call "served_at" field (to exercise the contract's ignore list)
    noise_sd: float = 0.0
    stamp: bool = False

    def predict(self, features: Sequence[float]) -> float:
        z = self.bias + sum(w * x for w, x in zip(self.weights, features, strict=False))
        return sigmoid(z)


def make_model_app(spec: ModelSpec) -> web.Application:
    rng = random.Random(spec.seed)

    async def predict(request: web.Request) -> web.Response:
        spec.calls += 1
        if request.headers.get("X-Shadow-Request"):
            spec.shadow_calls += 1
        if len(spec.seen_headers) < spec.keep_headers:
            spec.seen_headers.append(dict(request.headers))
        if spec.latency_s:
            await asyncio.sleep(spec.latency_s)
        if spec.error_rate and rng.random() < spec.error_rate:
            return web.json_response({"error": "model failure"}, status=503)
        try:
            doc = orjson.loads(await request.read())
            features = [float(x) for x in doc.get("features", [])]
        except (orjson.JSONDecodeError, TypeError, ValueError, AttributeError):
            return web.json_response({"error": "bad input"}, status=400)
        p = spec.predict(features)
        if spec.noise_sd:
            p = sigmoid(math.log(max(p, 1e-12) / max(1 - p, 1e-12)) + rng.gauss(0, spec.noise_sd))
        out: dict[str, object] = {
            "score": round(p, 6),
            "label": int(p >= 0.5),
            "model": spec.version,
        }
        if spec.extra_field:
            out["explanation"] = {"top_feature": 0}
        if spec.stamp:
            out["served_at"] = rng.random()
        return web.Response(body=orjson.dumps(out), content_type="application/json")

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "model": spec.version})

    app = web.Application()
    app.router.add_post("/predict", predict)
    app.router.add_get("/healthz", healthz)
    return app


class ModelServer:
    """Run a model app on 127.0.0.1 inside the current event loop."""

    def __init__(self, spec: ModelSpec, port: int = 0) -> None:
        self.spec = spec
        self.port = port
        self.runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> ModelServer:
        self.runner = web.AppRunner(make_model_app(self.spec), access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", self.port)
        await site.start()
        addrs = self.runner.addresses
        self.port = int(addrs[0][1])
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m router.demo.models --version V [--weights champion|challenger] --port P``."""
    import argparse

    ap = argparse.ArgumentParser(description="serve a demo logistic-regression model")
    ap.add_argument("--version", required=True)
    ap.add_argument("--weights", choices=("champion", "challenger"), default="champion")
    ap.add_argument("--host", default="0.0.0.0")
    ap.add_argument("--port", type=int, default=9001)
    ap.add_argument("--latency-ms", type=float, default=0.0)
    args = ap.parse_args(argv)
    weights = CHALLENGER_WEIGHTS if args.weights == "challenger" else CHAMPION_WEIGHTS
    spec = ModelSpec(args.version, weights, latency_s=args.latency_ms / 1000.0)
    web.run_app(make_model_app(spec), host=args.host, port=args.port, access_log=None)


if __name__ == "__main__":
    main()
