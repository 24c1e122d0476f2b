"""shadow-router: a sidecar that makes ML model promotion safe.

The packages are the parts, and dependencies only point down (README "Architecture";
import-linter contracts in pyproject.toml): :mod:`router.cli` and :mod:`router.commands`;
:mod:`router.demo`; :mod:`router.promotion`; :mod:`router.sidecar` and :mod:`router.analysis`
(independent of each other); :mod:`router.capture`; the foundation :mod:`router.config`,
:mod:`router.metrics` and :mod:`router.netutil`.
"""

__version__ = "0.1.0"

import os as _os

# polars' allocator (jemalloc, read once when polars loads) keeps freed pages for 10 s by
# default: an analysis frees tens of MB a page, so a re-fold of a week's archive held
# 100-250 MB more than it used. Freed pages go back within 200 ms here, by jemalloc's
# background thread (measured at 50M records: peak 1,568 -> 1,471 MiB, the same CPU; with no
# delay at all, 1,410 MiB but 39% more CPU). A value set by the user is kept.
_os.environ.setdefault(
    "_RJEM_MALLOC_CONF", "background_thread:true,dirty_decay_ms:200,muzzy_decay_ms:0"
)
