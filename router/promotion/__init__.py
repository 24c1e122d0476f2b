"""Promotion: canary ramps with automated rollback, human approval, tamper-evident audit and
webhooks, driven through the routers' admin API.

Layout (pure core, thin I/O shells):

- :mod:`.config`: the ``promotion:`` configuration (pydantic, unknown keys are errors).
- :mod:`.state`: the plain data (stages, steps, pins, the controller state, events).
- :mod:`.machine`: the pure state machine (stages, verdicts, approvals, router target).
- :mod:`.guardrails`: pure error-rate / latency checks over captured records.
- :mod:`.audit`: hash-chained audit records and their verification (pure) plus the Redis/JSONL log.
- :mod:`.approval`: questionnaire validation and the rubber-stamp flag (pure).
- :mod:`.webhooks`: HMAC signatures (pure) and the background sender.
- :mod:`.outbox`: the durable webhook outbox in Redis and its one deliverer.
- :mod:`.lease`: the Redis lease that keeps a single controller per experiment.
- :mod:`.store`: controller state in Redis, committed atomically with its audit records.
- :mod:`.routers`: idempotent reconciliation of router replicas through the admin API.
- windows of captured records are read through :mod:`router.capture.reader` (every shard).
- :mod:`.analyzer`: the controller's call of the analyzer and the verdict of a report.
- :mod:`.fleet`: the replicas' heartbeats and the wait for convergence.
- :mod:`.commit`: a transition committed, then the routers reconciled and webhooks queued.
- :mod:`.controller`: the loop tying these together.
- :mod:`.actions`: the CLI's operations (rollback, resume, approve, reject, status, verify).
"""

from router.promotion.config import PromotionConfig, load_promotion_config

__all__ = ["PromotionConfig", "load_promotion_config"]
