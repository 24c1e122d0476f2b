"""Redis clients for capture URLs: ``redis://``, ``rediss://`` (TLS), and
``redis+cluster://h1:p1,h2:p2,...`` (Redis Cluster, every seed a startup node)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis

from router.config import parse_redis_url


def is_cluster_url(url: str) -> bool:
    return urlsplit(url).scheme.endswith("+cluster")


def make_client(url: str, timeout: float = 2.0) -> Any:
    """An asyncio client: ``redis.asyncio.Redis``, or ``RedisCluster`` for ``+cluster`` URLs
    (every seed of ``redis+cluster://h1:p1,h2:p2,...`` is a startup node, so the client starts
    while some seeds are down).

    ``rediss://`` (TLS) and credentials in the URL (``redis://user:password@host``) are passed
    to redis-py as they are. A malformed URL raises ``ValueError`` naming the problem."""
    target = parse_redis_url(url)
    kw: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": min(1.0, timeout)}
    if target.cluster:
        from redis.asyncio.cluster import ClusterNode, RedisCluster
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # no blind client-side retries: a failed write goes to the spool and is replayed
        # through the de-duplicating script (redirections, MOVED/ASK, are still followed)
        seeds = [ClusterNode(host, port) for host, port in target.seeds[1:]]
        return RedisCluster.from_url(target.node_url(0), startup_nodes=seeds,
                                     retry=Retry(NoBackoff(), 0), **kw)  # fmt: skip
    return aioredis.Redis.from_url(url, retry_on_timeout=False, **kw)


def make_sync_client(url: str, timeout: float = 10.0) -> Any:
    """A blocking client (readers, export, controller): ``redis.Redis`` or
    ``redis.cluster.RedisCluster`` (all seeds of a cluster URL, as :func:`make_client`)."""
    import redis

    target = parse_redis_url(url)
    kw: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": min(2.0, timeout)}
    if target.cluster:
        from redis.cluster import ClusterNode, RedisCluster

        seeds = [ClusterNode(host, port) for host, port in target.seeds[1:]]
        return RedisCluster.from_url(target.node_url(0), startup_nodes=seeds, **kw)
    return redis.Redis.from_url(url, **kw)
