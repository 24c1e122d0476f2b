"""shadow-router: a sidecar that makes ML model promotion safe.

The packages are the parts, and dependencies only point down (README "Architecture";
import-linter contracts in pyproject.toml): :mod:`router.cli` and :mod:`router.commands`;
:mod:`router.demo`; :mod:`router.promotion`; :mod:`router.sidecar` and :mod:`router.analysis`
(independent of each other); :mod:`router.capture`; the foundation :mod:`router.config`,
:mod:`router.metrics` and :mod:`router.netutil`.
"""

__version__ = "0.1.0"
