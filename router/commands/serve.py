"""``router serve -c CONFIG [--workers N]``: run the sidecar."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="run the sidecar in front of the champion and challenger")
    p.add_argument("-c", "--config", required=True, help="router YAML config")
    p.add_argument("--workers", type=int, default=1, help="worker processes sharing the port")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from router.config import ConfigError, load_config

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"router: invalid config: {exc}", file=sys.stderr)
        return 2
    if args.workers < 1:
        print("router: --workers must be at least 1", file=sys.stderr)
        return 2
    from router.sidecar.server import serve

    return serve(
        cfg, workers=args.workers, log_level=args.log_level, promotion_view=promotion_view
    )


async def promotion_view(redis_url: str, experiment: str) -> dict[str, Any] | None:
    """The admin API's ``GET <prefix>/promotion``: what ``router canary status --json`` prints,
    or None when no controller ever ran for ``experiment``. Injected into the sidecar here, so
    the sidecar never imports :mod:`router.promotion` (loaded on the first such request)."""
    from router.promotion import actions

    try:
        return await actions.status(redis_url, experiment)
    except actions.NoExperiment:
        return None
