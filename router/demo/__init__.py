"""The demo: ``router demo``, the whole product on one machine, and the data it makes up.

Owns the one-command story (:mod:`.story`), the small real model servers it starts
(:mod:`.models`, also ``python -m router.demo.models`` in docker-compose and the load test)
and seeded synthetic records and outcomes (:mod:`.synth`, for ``router analyze --synthetic``,
tests and benchmarks; it lives here because it assigns units with the sidecar's hash, which
analysis may not import).

May import every part below the commands: promotion, sidecar, analysis, capture and the
foundation.

Start reading at :func:`router.demo.story.main`.
"""
