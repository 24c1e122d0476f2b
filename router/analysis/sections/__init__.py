"""The report's sections, one module per idea, each a pure function from an
:class:`~router.analysis.accumulate.Accumulator` (and the policy) to its part of the DESIGN.md
report: :mod:`.counts` (``window``, ``counts``, ``srm``), :mod:`.latency`, :mod:`.errors`,
:mod:`.divergence` (with the response ``contract``), :mod:`.quality`, :mod:`.metrics` (uplift,
sample size, series; per unit through :mod:`.unit_view`), :mod:`.segments` (with the fairness
figures) and :mod:`.drift`; the ``data_quality`` section is :mod:`router.analysis.data_quality`.
:mod:`router.analysis.report` assembles them, then the gates and the decision.
"""
