"""``router archive -c CONFIG``: copy the capture streams into Parquet partitions, continuously.

Runs until SIGTERM or SIGINT (then writes what it holds and acknowledges it), or with
``--until-idle`` until the streams have nothing new (backfills, cron). Exit codes: 0 stopped
cleanly, 2 bad configuration or arguments, 3 Redis or the archive location unreachable at start.
"""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("archive", help="archive captured pairs and outcomes to Parquet")
    p.add_argument("-c", "--config", required=True, help="router config YAML")
    p.add_argument("--uri", help="archive location (default: archive.uri of the config)")
    p.add_argument("--redis", help="Redis URL (default: capture.redis of the config)")
    p.add_argument("--consumer", help="name in the consumer group (default: archive.consumer)")
    p.add_argument("--until-idle", action="store_true",
                   help="stop once every stream is archived (default: run until stopped)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(func=run)


def archive_uri(cfg: object, override: str | None) -> str:
    from pathlib import Path

    from router.config import RouterConfig

    assert isinstance(cfg, RouterConfig)
    return override or cfg.archive.uri or str(Path(cfg.capture.data_dir) / "archive")


def run(args: argparse.Namespace) -> int:
    import logging
    import signal

    from router.config import ConfigError, load_config

    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(message)s")
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"router archive: invalid config: {exc}", file=sys.stderr)
        return 2
    if args.consumer:
        cfg.archive.consumer = args.consumer
    try:
        url = args.redis or _config_redis_url(cfg, args.config)
    except ValueError as exc:
        print(f"router archive: {exc}", file=sys.stderr)
        return 2

    from redis.exceptions import RedisError

    from router.archive.archiver import Archiver
    from router.archive.store import ArchiveStore, StoreError
    from router.capture.clients import make_sync_client

    uri = archive_uri(cfg, args.uri)
    try:
        store = ArchiveStore.open(uri)
        store.check()
    except StoreError as exc:
        print(f"router archive: {exc}", file=sys.stderr)
        return 3
    try:
        client = make_sync_client(url)
        client.ping()
    except ValueError as exc:
        print(f"router archive: malformed Redis URL {url!r}: {exc}", file=sys.stderr)
        return 2
    except RedisError as exc:
        print(f"router archive: Redis unreachable at {url}: {exc}", file=sys.stderr)
        return 3
    archiver = Archiver(client, store, cfg.experiment.name, cfg.archive)
    server = None
    if cfg.archive.metrics_listen:
        from router.archive.metrics_http import serve_metrics

        server = serve_metrics(cfg.archive.metrics_listen, archiver.metrics)

    def stop(_signum: int, _frame: object) -> None:
        archiver.stop_event.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    logging.getLogger(__name__).info(
        "archive: %s -> %s as %s/%s", cfg.experiment.name, store.describe(),
        cfg.archive.group, archiver.consumer,
    )  # fmt: skip
    try:
        totals = archiver.run(until_idle=args.until_idle)
    finally:
        if server is not None:
            server.shutdown()
        client.close()
    print(f"router archive: {totals.records['pairs']} records, {totals.records['outcomes']} "
          f"outcomes in {totals.files} files ({totals.duplicates} already archived, "
          f"{totals.errors} errors)", file=sys.stderr)  # fmt: skip
    return 0


def _config_redis_url(cfg: object, path: str) -> str:
    from pathlib import Path

    from router.config import RouterConfig

    assert isinstance(cfg, RouterConfig)
    if cfg.capture.redis != "embedded":
        return cfg.capture.redis
    url_file = Path(cfg.capture.data_dir) / "redis" / "url"
    if url_file.exists():
        return url_file.read_text().strip()
    raise ValueError(f"the embedded Redis of {path} is not running ({url_file} is missing); "
                     "pass --redis URL")  # fmt: skip
