"""Redis key names of capture: the one place that names them (writers and readers call these).

``<experiment>:pairs`` and ``<experiment>:outcomes`` on a single Redis; with Redis Cluster
(``redis+cluster://``) ``{<experiment>}:pairs`` and ``{<experiment>}:outcomes`` so one
experiment's streams share a hash slot while experiments spread over the cluster. With
``pair_shards: N > 1`` pairs go to N streams chosen by ``crc32(request_id) % N``:
``<experiment>:pairs:<i>``, or ``{<experiment>:<i>}:pairs`` on a cluster (a different slot per
shard, so one hot experiment spreads over the masters). :mod:`router.capture.reader` merges them
back in stream-id order.

The writer's exactly-once marks (:mod:`router.capture.batches`) and the recovery probe's key live
in the hash slot of their stream.
"""

from __future__ import annotations


def pairs_key(experiment: str, *, cluster: bool = False, shard: int | None = None) -> str:
    if shard is None:
        return f"{{{experiment}}}:pairs" if cluster else f"{experiment}:pairs"
    return f"{{{experiment}:{shard}}}:pairs" if cluster else f"{experiment}:pairs:{shard}"


def outcomes_key(experiment: str, *, cluster: bool = False) -> str:
    return f"{{{experiment}}}:outcomes" if cluster else f"{experiment}:outcomes"


def pair_keys(experiment: str, *, cluster: bool = False, shards: int = 1) -> list[str]:
    """Every pairs stream of an experiment written with ``pair_shards = shards``."""
    if shards <= 1:
        return [pairs_key(experiment, cluster=cluster)]
    return [pairs_key(experiment, cluster=cluster, shard=i) for i in range(shards)]


def writer_mark_key(stream_key: str, nonce: str) -> str:
    """The exactly-once high-water mark of one writer on one stream (same hash slot)."""
    return f"{stream_key}:writer:{nonce}"


def batch_marker_key(stream_key: str, batch_id: str) -> str:
    """The per-batch marker of the earlier design (only read, at replay, for old spools)."""
    return f"{stream_key}:batch:{batch_id}"


def probe_key(stream_key: str) -> str:
    """The key the recovery probe writes to test a stream's write path (same hash slot)."""
    return f"{stream_key}:probe"


def stream_kind(key: str) -> str:
    return "outcomes" if key.endswith(":outcomes") else "pairs"
