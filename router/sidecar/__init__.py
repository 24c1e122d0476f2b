"""The sidecar: the hot path and its server.

Owns the HTTP/1.1 server (:mod:`.httpserver`, :mod:`.http_protocol`, :mod:`.http_messages`,
:mod:`.http_limits`), the keep-alive upstream pool (:mod:`.upstream`, :mod:`.upstream_conn`,
:mod:`.upstream_types`), the request flow (:mod:`.dispatch` routes to :mod:`.proxy` or
:mod:`.admin`; :mod:`.headers` says what crosses the proxy), one worker's parts and background
tasks (:mod:`.app`: pools, capture writer, :mod:`.shadow` dispatcher, :mod:`.guard`, live state
in :mod:`.control`, followed fleet-wide in Redis by :mod:`.fleet`), the deterministic
assignment (:mod:`.assign`) and the worker processes (:mod:`.server`).

May import :mod:`router.capture` (records, the writer, outcome rows, the managed redis-server)
and the foundation (:mod:`router.config`, :mod:`router.metrics`, :mod:`router.netutil`); never
:mod:`router.analysis` or :mod:`router.promotion` (import-linter contracts in pyproject.toml).
The one view of promotion it serves (``GET <prefix>/promotion``) is a callable that the serve
command injects.

Start reading at :mod:`.server` (``RunningRouter``, ``serve``), then :mod:`.dispatch`, then
:func:`router.sidecar.proxy.handle_proxy` (one request, end to end) and :mod:`.app`.
"""
