"""Gates and the promotion decision (pure: report sections in, gate rows and a decision out).

Every gate states its null hypothesis, its test, whether that test stays valid under repeated
looks, and what it saw (DESIGN principle 7). A row (:func:`.rows.row`) is::

    {name, kind, state, passed, significant, value, threshold, reason,
     null_hypothesis, test, always_valid, ci, better}

``state`` is one of (:mod:`.rules`)

* ``pass``: the evidence clears the gate (for a tested gate: the whole always-valid interval is
  on the good side of the threshold, i.e. the test of "worse than the threshold" rejects);
* ``fail``: for a tested gate, the whole interval is past the threshold (the test of "within the
  threshold" rejects); for a descriptive gate (drift, fairness), the point estimate is past it;
* ``inconclusive``: the interval still contains the threshold: more data will tell;
* ``not_enough_data``: the test cannot be computed yet (no data, or a quantile whose order
  statistic does not exist at this n);
* ``not_evaluable``: the data needed for the gate is missing or degenerate (no labels joined,
  no variance in either arm) and will not appear by waiting alone;
* ``not_applicable``: the gate does not apply to this window (no live split in a shadow step,
  no reference for input drift, a prediction kind without that statistic);
* ``warn``: advisory only: shown, and listed in the decision's reasons, never blocking.

``passed`` is ``state in (pass, not_applicable)`` and ``significant`` is ``state == fail`` for a
tested gate. The decision (:func:`.decision.decide`): **rollback** when a guardrail, the response
contract or the primary metric *fails* (its interval lies past the threshold, or entirely below
zero for the primary metric); else **hold** when any other gate fails (sample ratio, fairness,
drift, or a gate kind added later, e.g. data quality); else **continue** while any gate is
inconclusive, not enough data or not evaluable (a gate that could not be evaluated never counts
as a pass); else **promote**.

Tested gates use always-valid intervals (confidence sequences, :mod:`router.analysis.sequential`)
because the promotion controller re-evaluates them at every look: the chance that a gate at its
threshold ever fails (a false rollback) or ever passes (a false promote) over any number of looks
is at most α. :func:`.running.apply_running` intersects the intervals across the controller's
looks of one step (the intersection of a confidence sequence is one too).

Where to start reading: :mod:`.decision` (all gates of a report, then the decision). The gates
by family: :mod:`.evidence` (sample size, sample ratio), :mod:`.guardrails` (latency, errors,
response contract), :mod:`.quality` (label-joined tolerance gates), :mod:`.descriptive` (drift,
fairness), :mod:`.primary` (the primary metric); the data-quality gates are in
:mod:`router.analysis.data_quality`.
"""
