"""The report's sections as a reader sees them: one function per section, from the report JSON
to a :class:`router.analysis.doc.Section` (pure). :mod:`.headline` (the decision in sentences),
:mod:`.gates`, :mod:`.compare` (changes since a previous report), :mod:`.live` (outcome metrics
of the live split, segments), :mod:`.paired` (quality, latency, errors, divergence: both models
on the same requests), :mod:`.data` (traffic and sample ratio, data quality, input drift, method
notes); :mod:`.figures` formats a metric's or a gate's numbers in their units.
:data:`router.analysis.render.SECTIONS` lists them in reading order.
"""
