"""Capture: what the sidecar records, and getting it to Redis and back, exactly once.

Owns the record schema and its finalisation (:mod:`.records`), outcome rows (:mod:`.outcomes`),
the Redis writer (:mod:`.writer`, with :mod:`.batches` for the exactly-once script,
:mod:`.keys` for every key name, :mod:`.clients` for Redis and Redis Cluster clients and
:mod:`.health` for ``/readyz``), the local spool (:mod:`.spool`), the readers (:mod:`.reader`),
consumer groups (:mod:`.consumer`), the managed redis-server (:mod:`.redisproc`), and an
experiment's control plane shared by the routers and the promotion controller (:mod:`.controlplane`:
the versioned live state, the audit chain append with :mod:`.chain`, the webhook outbox,
heartbeats).

May import only the foundation (:mod:`router.config`, :mod:`router.metrics`); never the
sidecar, analysis, promotion or the demo (import-linter contracts in pyproject.toml), so
every part above can read and write captured data.

Start reading at :mod:`.records` (what one record is), then
:class:`router.capture.writer.CaptureWriter`, :mod:`.keys` and :mod:`.reader`.
"""
