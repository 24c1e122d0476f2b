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


class ControlKeys:
    """Every key of an experiment's control plane: the live state, its change channel, the
    replicas' heartbeats, the audit chain, the webhook outbox and the promotion controller's
    state, lease and counters.

    ``<experiment>:<name>`` on a single Redis (the names the controller always used), and
    ``{<experiment>}:<name>`` on Redis Cluster: one hash slot per experiment, so a transition,
    its audit records, the live state and the outbox commit in one script on one master."""

    __slots__ = ("cluster", "experiment", "prefix")

    def __init__(self, experiment: str, *, cluster: bool = False) -> None:
        self.experiment = experiment
        self.cluster = cluster
        self.prefix = f"{{{experiment}}}" if cluster else experiment

    def key(self, name: str) -> str:
        return f"{self.prefix}:{name}"

    @property
    def live(self) -> str:
        """The versioned live state document (JSON)."""
        return self.key("live")

    @property
    def channel(self) -> str:
        """Pub/sub channel announcing a new live version (the message is the version)."""
        return self.key("live:changes")

    @property
    def replicas(self) -> str:
        """Hash: replica (worker) id -> heartbeat JSON (applied version, time, source)."""
        return self.key("replicas")

    @property
    def audit(self) -> str:
        return self.key("audit")

    @property
    def head(self) -> str:
        return self.key("audit:head")

    @property
    def outbox(self) -> str:
        """Hash: delivery id -> webhook outbox entry (JSON), until delivered."""
        return self.key("outbox")

    @property
    def outbox_lease(self) -> str:
        """Held by the one process delivering the outbox (controller, ``router webhooks``)."""
        return self.key("outbox:lease")

    @property
    def webhooks(self) -> str:
        """The experiment's webhook receivers and secret (JSON), written by ``canary start``."""
        return self.key("webhooks")

    @property
    def promotion_state(self) -> str:
        return self.key("promotion:state")

    @property
    def lease(self) -> str:
        return self.key("promotion:lease")

    @property
    def metrics(self) -> str:
        return self.key("promotion:metrics")

    @property
    def running(self) -> str:
        return self.key("promotion:running")
