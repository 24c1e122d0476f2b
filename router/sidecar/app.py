"""One worker's router: upstream pools, shadow dispatcher, capture writer, guard, live state.

:class:`RouterApp` owns the per-process parts and the background tasks (live-state polling,
guard evaluation, metrics snapshots). It imports no request handler: :mod:`router.sidecar.dispatch`
routes each request to :mod:`router.sidecar.proxy` (the hot path) or :mod:`router.sidecar.admin`
(the operational endpoints), which take the app as a parameter. :mod:`router.sidecar.server` runs
one or more of these in processes that share the listening socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

from router.capture.records import ContractRules, FinalizeOptions, PendingRecord
from router.capture.writer import CaptureWriter
from router.config import ContractConfig, RouterConfig, UpstreamConfig
from router.metrics import SNAPSHOT_INTERVAL, Metrics, SnapshotStore, declare_defaults
from router.sidecar.assign import initial_layout, owner_table, threshold
from router.sidecar.budget import ShadowBudget
from router.sidecar.challengers import LIVE_EXCLUDE, expiry_deadline
from router.sidecar.control import (
    POLL_INTERVAL,
    ChallengerLive,
    ControlFile,
    Live,
    LiveState,
    UpstreamPin,
)
from router.sidecar.fleet import FleetFollower
from router.sidecar.guard import ShadowGuard
from router.sidecar.headers import HOP_BY_HOP
from router.sidecar.shadow import ShadowDispatcher
from router.sidecar.tls import client_context
from router.sidecar.upstream import UpstreamPool

log = logging.getLogger("router")

PromotionView = Callable[[str, str], Awaitable[dict[str, Any] | None]]
"""``(redis_url, experiment)`` -> the promotion controller's state as ``router canary status
--json`` prints it, or None when no controller ever ran for that experiment. Injected by the
command that starts the router (the sidecar never imports :mod:`router.promotion`)."""


def contract_rules(c: ContractConfig) -> ContractRules:
    return ContractRules(
        ignore=tuple(c.ignore),
        compare_values=c.compare_values,
        tolerance=tuple(c.tolerance.items()),
        default_tolerance=c.default_tolerance,
    )


def challenger_live(c: UpstreamConfig, name: str, split: float, mirror: float,
                    extents: tuple[tuple[int, int], ...]) -> ChallengerLive:  # fmt: skip
    return ChallengerLive(
        name=name, url=c.url, version=c.version, split=split, mirror=mirror, extents=extents,
        upstream=c.model_dump(mode="json", exclude=set(LIVE_EXCLUDE)),
    )  # fmt: skip


def initial_state(cfg: RouterConfig) -> LiveState:
    first = cfg.first_challenger
    layout = initial_layout([(c.name, c.split) for c in cfg.challengers])
    return LiveState(
        version=1,
        split=first.split,
        mirror=first.mirror,
        champion=UpstreamPin(cfg.champion.url, cfg.champion.version),
        challenger=UpstreamPin(first.url, first.version),
        challengers=tuple(
            challenger_live(c, c.name, c.split, c.mirror, layout[c.name]) for c in cfg.challengers
        ),
        started_at=time.time(),
    )


class MirrorRoute:
    """Where a request served by one variant is mirrored to: the target's name, the mirror
    threshold of its share (``raw``), the threshold after the guard (``guarded``) and after the
    shadow budget too (``effective``), and the target's budget (None: no budget)."""

    __slots__ = ("budget", "effective", "guarded", "raw", "target")

    def __init__(self, target: str, raw: int, budget: ShadowBudget | None) -> None:
        self.target = target
        self.raw = raw
        self.guarded = raw
        self.effective = raw
        self.budget = budget


class RouterApp:
    def __init__(
        self,
        cfg: RouterConfig,
        run_dir: str | Path,
        redis_url: str | None,
        *,
        promotion_view: PromotionView | None = None,
    ) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.metrics = Metrics()
        declare_defaults(self.metrics)
        self.snapshots = SnapshotStore(self.run_dir / "metrics")
        self.control = ControlFile(self.run_dir)
        exp = cfg.experiment
        self.salt = exp.salt
        self.mirror_salt = exp.effective_mirror_salt
        self.unit_header = exp.unit.header.lower() if exp.unit.header else None
        self.unit_path = exp.unit.json_path
        self.body_segments = any(s.json_path for s in exp.segments)
        self.fallback_to_champion = exp.fallback == "champion"
        name, value = exp.shadow_header_pair
        self.shadow_header = (name.encode(), value.encode())
        # never forwarded from a client: hop-by-hop headers, and the shadow marker (only the
        # router marks shadow requests)
        self.drop_headers = HOP_BY_HOP | {name.lower().encode()}
        if exp.force_header:  # the force headers are the router's, never the model's
            self.drop_headers |= {exp.force_header.lower().encode(),
                                  exp.force_token_header.lower().encode()}  # fmt: skip
        self.drop_headers_id = self.drop_headers | {b"x-request-id"}  # (the client's id replaced)
        self.keep_body = bool(cfg.capture.fields or cfg.capture.hash_fields)
        self.admin_prefix = cfg.admin.prefix
        self.guard = ShadowGuard(cfg.guard)
        self.live = Live.of(initial_state(cfg))  # swapped whole by apply_state
        self.fleet: FleetFollower | None = None  # the shared live state in Redis, when used
        # the noise floor: units whose champion answers are repeated (throttled with mirroring)
        self.noise_salt = exp.effective_noise_salt
        self.noise_threshold_raw = threshold(exp.noise_floor)
        self.noise_threshold = self.noise_threshold_raw
        self.upstreams: dict[str, UpstreamConfig] = {}
        self.upstream_headers: dict[str, list[tuple[bytes, bytes]]] = {}
        self.upstream_header_names: dict[str, frozenset[bytes]] = {}
        self.variants: list[str] = ["champion"]  # index 0 the champion, i the i-th challenger
        self.owner = bytes(10_000)  # per bucket, the index of the variant that serves it
        self.mirror_routes: list[list[MirrorRoute]] = [[]]  # per served variant index
        self.mirror_any = False
        self.budgets: dict[str, ShadowBudget] = {}
        self._set_state(self.state)
        self.force_header = exp.force_header.lower() if exp.force_header else None
        self.force_token_header = exp.force_token_header.lower()
        token_env = cfg.admin.force_token_env
        self.force_token = (os.environ.get(token_env, "") if token_env else "").encode()
        self.force_units = frozenset(exp.force_units)
        self.pools: dict[str, UpstreamPool] = {}
        self.shadow_pools: dict[str, UpstreamPool] = {}
        self._base_paths: dict[str, bytes] = {}
        self.redis_url = redis_url
        self.promotion_view = promotion_view  # GET <prefix>/promotion; None: answered 503
        self.writer: CaptureWriter | None = None
        self.shadow = ShadowDispatcher(
            self.metrics,
            self.capture_submit,
            cfg.limits.shadow_queue,
            cfg.limits.shadow_concurrency,
        )
        self._tasks: list[asyncio.Task[None]] = []
        self.started_at = time.time()
        self.open_connections: Callable[[], int] | None = None  # set by the server

    # ---- upstreams ----------------------------------------------------------------------
    def _make_pools(self, variant: str, pin: UpstreamPin) -> None:
        ucfg = self.upstreams[variant]
        parts = urlsplit(pin.url)
        tls = parts.scheme == "https"
        host, port = parts.hostname or "127.0.0.1", parts.port or (443 if tls else 80)
        old = [p for p in (self.pools.get(variant), self.shadow_pools.get(variant)) if p]
        limits = self.cfg.limits
        common: dict[str, Any] = {
            "connect_timeout": ucfg.connect_timeout,
            "timeout": ucfg.timeout,
            "stream_over": limits.buffer_response_bytes,
            "stream_high": limits.stream_buffer_bytes,
            "read_timeout": ucfg.read_timeout,
            "stream_max_duration": ucfg.stream_max_duration,
            "ssl": client_context(ucfg.tls) if tls else None,
            "server_hostname": ucfg.tls.server_name if tls else None,
        }
        self.pools[variant] = UpstreamPool(
            host, port, pool_size=ucfg.pool_size,
            stream_keep=self.cfg.capture.max_response_bytes, **common,
        )  # fmt: skip
        self.shadow_pools[variant] = UpstreamPool(
            host, port, pool_size=self.shadow_pool_size(ucfg.pool_size),
            max_response_body=limits.shadow_max_response_bytes,
            stream_keep=limits.shadow_max_response_bytes, **common,
        )  # fmt: skip
        self._base_paths[variant] = parts.path.rstrip("/").encode()
        if old:
            asyncio.get_running_loop().create_task(self._close_later(old, ucfg.timeout + 1.0))

    def shadow_pool_size(self, pool_size: int) -> int:
        return max(1, min(pool_size, self.cfg.limits.shadow_concurrency))

    def pool_connections(self, pool_sizes: list[int]) -> int:
        """Upstream connections the champion and challengers with these ``pool_size``s can
        open: each pool plus its shadow pool."""
        sizes = [self.cfg.champion.pool_size, *pool_sizes]
        return sum(p + self.shadow_pool_size(p) for p in sizes)

    @property
    def pool_budget(self) -> int:
        """Upstream connections reserved at start: the configured challengers' pools, and room
        for ``limits.max_challengers`` in all, each as large as the largest configured one
        (a live change beyond it is refused: :meth:`check_pools`)."""
        sizes = [c.pool_size for c in self.cfg.challengers]
        room = max(0, self.cfg.limits.max_challengers - len(sizes))
        return self.pool_connections(sizes + [max(sizes)] * room)

    def check_pools(self, challengers: tuple[ChallengerLive, ...]) -> str | None:
        """Why these challengers do not fit the descriptors this worker reserved at start,
        or None when they do."""
        limit = self.cfg.limits.max_challengers
        if len(challengers) > limit:
            return (f"limits.max_challengers: {len(challengers)} challengers, at most {limit} "
                    "(descriptors for that many were reserved at start; raise it and restart)")
        default = self.cfg.challengers[0].pool_size
        need = self.pool_connections(
            [int(c.upstream.get("pool_size", default)) for c in challengers]
        )
        if need > self.pool_budget:
            return (f"pool_size: these challengers' pools need {need} upstream connections per "
                    f"worker, {self.pool_budget} were reserved at start (file descriptors: "
                    "limits.max_challengers times the largest configured pool_size)")
        return None

    def descriptors_reserved(self) -> int:
        """File descriptors this worker may need besides client connections: every upstream
        pool of :attr:`pool_budget` twice over (a live change keeps the old pools until their
        requests finish), plus 64 for Redis, the spool, snapshots, the listening socket and
        the event loop."""
        return 2 * self.pool_budget + 64

    @staticmethod
    async def _close_later(pools: list[UpstreamPool], delay: float) -> None:
        """Close replaced pools once requests already on them have finished."""
        await asyncio.sleep(delay)
        for p in pools:
            await p.close()

    @property
    def state(self) -> LiveState:
        return self.live.state

    @property
    def shared_state(self) -> bool:
        """The fleet shares one live state in the capture Redis (see :mod:`.fleet`)."""
        return bool(self.cfg.control.shared and self.cfg.capture.enabled and self.redis_url)

    def version_of(self, variant: str) -> str:
        return self.upstreams[variant].version

    def timeout_of(self, variant: str) -> float:
        return self.upstreams[variant].timeout

    def headers_for(
        self, variant: str, headers: list[tuple[bytes, bytes]]
    ) -> list[tuple[bytes, bytes]]:
        """``headers`` with the upstream's configured headers in place of the client's."""
        extra = self.upstream_headers[variant]
        if not extra:
            return headers
        names = self.upstream_header_names[variant]
        return [*(h for h in headers if h[0].lower() not in names), *extra]

    def target_for(self, variant: str, target: bytes) -> bytes:
        base = self._base_paths.get(variant, b"")
        return base + target if base else target

    # ---- capture --------------------------------------------------------------------------
    def capture_submit(self, rec: PendingRecord) -> bool:
        if self.writer is None:
            return False
        return self.writer.submit_record(rec)

    # ---- live state -----------------------------------------------------------------------
    def _upstream_of(self, c: ChallengerLive) -> UpstreamConfig:
        """A live challenger's upstream config: its live settings over the config file's
        challenger of that name (which alone holds literal ``headers``)."""
        base: dict[str, Any] = {}
        for cc in self.cfg.challengers:
            if cc.name == c.name:
                base = cc.model_dump(exclude={"name", "split", "mirror"})
        return UpstreamConfig.model_validate({**base, **c.upstream, "url": c.url,
                                              "version": c.version})  # fmt: skip

    def _set_state(self, state: LiveState) -> None:
        """Derive the hot path's tables from ``state``: the variants, the bucket -> variant
        table, the upstream configs and the mirror routes (with their budgets), and the
        single-challenger :class:`Live` view (expired: nothing split or mirrored)."""
        live_view = Live.of(state, self.guard.mirror_factor())
        if state.expired:
            live_view = Live(state, 0, 0, 0)
        self.live = live_view
        champ = self.cfg.champion.model_copy(
            update={"url": state.champion.url, "version": state.champion.version}
        )
        upstreams: dict[str, UpstreamConfig] = {"champion": champ}
        for c in state.challengers:
            upstreams[c.name] = self._upstream_of(c)
        names = [c.name for c in state.challengers]
        self.upstreams = upstreams
        # per upstream: configured headers (API keys) added to each request, replacing the
        # client's of the same names; never captured (records hold no request headers)
        self.upstream_headers = {v: u.upstream_headers() for v, u in upstreams.items()}
        self.upstream_header_names = {
            v: frozenset(k.lower() for k, _ in h) for v, h in self.upstream_headers.items()
        }
        self.variants = ["champion", *names]
        live = not state.expired
        # expired: every bucket back to the champion (the layout is kept for the record)
        self.owner = owner_table(state.layout(), names) if live else bytes(10_000)
        now = time.monotonic()
        budgets: dict[str, ShadowBudget] = {}
        for name, ucfg in upstreams.items():
            if ucfg.mirror_max_rps:
                old = self.budgets.get(name)
                if old is not None and old.max_rps == ucfg.mirror_max_rps:
                    budgets[name] = old
                else:
                    budgets[name] = ShadowBudget(ucfg.mirror_max_rps, now)
        self.budgets = budgets
        champion_routes: list[MirrorRoute] = []
        routes: list[list[MirrorRoute]] = [champion_routes]
        for c in state.challengers:
            raw = threshold(c.mirror) if live else 0
            if raw:
                champion_routes.append(MirrorRoute(c.name, raw, budgets.get(c.name)))
                routes.append([MirrorRoute("champion", raw, budgets.get("champion"))])
            else:
                routes.append([])
        self.mirror_routes = routes
        self.mirror_any = any(routes)
        self._apply_guard()

    def apply_state(self, state: LiveState) -> None:
        """Make ``state`` live: one swap of :attr:`live` and of the A/B/n tables (new pools
        first when a URL moved; a removed challenger's pools closed once idle)."""
        old = self.live.state
        old_upstreams = self.upstreams
        self._set_state(state)
        for variant, ucfg in self.upstreams.items():
            before = old_upstreams.get(variant)
            if before is None or before.url != ucfg.url or before.pool_size != ucfg.pool_size:
                self._make_pools(variant, UpstreamPin(ucfg.url, ucfg.version))
        gone = [v for v in self.pools if v not in self.upstreams]
        if gone:
            closing = [p for v in gone for p in (self.pools.pop(v), self.shadow_pools.pop(v))]
            asyncio.get_running_loop().create_task(self._close_later(closing, 30.0))
        if state.version != old.version:
            self.metrics.inc("router_control_changes")
            log.info(
                "live state v%d applied: champion=%s@%s challengers=[%s]%s (by %s%s)",
                state.version, state.champion.version, state.champion.url,
                ", ".join(f"{c.name}={c.version}@{c.url} split={c.split:g} mirror={c.mirror:g}"
                          for c in state.challengers),
                " EXPIRED: all traffic to the champion" if state.expired else "",
                state.updated_by, f": {state.note}" if state.note else "",
            )  # fmt: skip

    def _apply_guard(self) -> None:
        live = self.live
        factor = self.guard.mirror_factor()
        self.live = replace(live, mirror_threshold=int(live.mirror_threshold_raw * factor))
        for routes in self.mirror_routes:
            for r in routes:
                r.guarded = int(r.raw * factor)
                budget = r.budget.factor if r.budget is not None else 1.0
                r.effective = int(r.guarded * budget)
        self.noise_threshold = int(self.noise_threshold_raw * factor)

    @property
    def mirror_threshold(self) -> int:
        return self.live.mirror_threshold

    # ---- lifecycle ------------------------------------------------------------------------
    async def start(self, *, initialise_control: bool) -> None:
        for variant, ucfg in self.upstreams.items():
            self._make_pools(variant, UpstreamPin(ucfg.url, ucfg.version))
        if self.shared_state:
            assert self.redis_url is not None
            self.fleet = FleetFollower(
                self.cfg, self.redis_url, self.metrics, self.apply_state, self.state
            )
            await self.fleet.start()  # the current (or last known) state before serving
        else:
            if initialise_control:
                self.control.initialise(self.state)
            current = self.control.read()
            if current is not None:
                self.apply_state(current)
            self.control.changed()
        if self.cfg.capture.enabled and self.redis_url:
            self.writer = CaptureWriter(
                self.cfg.capture,
                self.redis_url,
                self.metrics,
                FinalizeOptions(
                    prediction_path=self.cfg.experiment.prediction_path,
                    prediction_format=self.cfg.experiment.prediction_format,
                    fields=tuple(self.cfg.capture.fields),
                    hash_fields=tuple(self.cfg.capture.hash_fields),
                    hash_salt=self.cfg.experiment.salt,
                    contract=contract_rules(self.cfg.experiment.contract),
                ),
                self.cfg.limits.capture_queue,
            )
            await self.writer.start()
        self.shadow.start()
        self._tasks = [
            asyncio.create_task(self._guard_loop(), name="shadow-guard"),
            asyncio.create_task(self._budget_loop(), name="shadow-budget"),
            asyncio.create_task(self._expiry_loop(), name="experiment-expiry"),
            asyncio.create_task(self._snapshot_loop(), name="metrics-snapshot"),
            asyncio.create_task(self._lag_loop(), name="loop-lag"),
        ]
        if self.fleet is None:
            self._tasks.append(asyncio.create_task(self._poll_control(), name="control-poll"))

    async def _poll_control(self) -> None:
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            if self.control.changed():
                state = self.control.read()
                if state is not None and state.version != self.state.version:
                    self.apply_state(state)

    async def _guard_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            change = self.guard.evaluate(time.time())
            if change is not None:
                self._apply_guard()
                label = "throttled" if change.throttled else "restored"
                self.metrics.inc("router_shadow_guard_changes", (label,))
                self.metrics.set("router_shadow_guard_active", 1.0 if change.throttled else 0.0)
                log.warning("shadow guard: mirroring %s (%s)", label, change.reason)

    async def _expiry_loop(self, interval: float = 0.5) -> None:
        """Ends the experiment when ``experiment.expires_at`` or ``max_duration_s`` passes."""
        exp = self.cfg.experiment
        if exp.expires_at is None and exp.max_duration_s is None:
            return
        while True:
            deadline = expiry_deadline(exp, self.state.started_at)
            if deadline is not None and not self.state.expired and time.time() >= deadline:
                try:
                    await self.expire(deadline)
                except Exception as exc:  # Redis away: retried on the next turn
                    self.metrics.inc("router_control_errors", ("expiry",))
                    log.error("experiment expiry not written yet: %s", exc)
            await asyncio.sleep(interval)

    async def expire(self, deadline: float) -> None:
        """Every unit back to the champion and mirroring off, in the live state every worker
        follows (once: the first worker to see the deadline writes it). With the shared live
        state the change is audited (``live_changed``) and sent to webhooks like any other."""
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(deadline))
        note = f"experiment expired at {when}: split and mirror returned to the champion"
        if self.fleet is not None:  # (a second writer finds it already so: nothing written)
            before = self.state.version
            got = await self.fleet.change({"expired": True}, expected=None, actor="expiry",
                                          note=note)  # fmt: skip
            if got.version != before:
                self.metrics.inc("router_experiment_expired")
                log.warning("live state v%d: %s", got.version, note)
            return
        new = self.control.modify(
            "expiry", note, lambda cur: None if cur.expired else {"expired": True}
        )
        if new is None:
            return  # another worker expired it first; the poll applies it here
        self.apply_state(new)
        self.metrics.inc("router_experiment_expired")
        log.warning("live state v%d: %s", new.version, note)

    async def _budget_loop(self) -> None:
        """Once a second: each shadow budget re-estimates its demand (see
        :mod:`router.sidecar.budget`) and the mirror thresholds follow."""
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            changed = False
            for b in self.budgets.values():
                changed |= b.tick(now)
            if changed:
                self._apply_guard()
                for name, b in self.budgets.items():
                    self.metrics.set("router_shadow_budget_factor", b.factor, (name,))

    async def _lag_loop(self, interval: float = 0.1) -> None:
        """Event-loop lag: anything that blocks the loop delays every request by this much."""
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(interval)
            lag = time.perf_counter() - t0 - interval
            self.metrics.observe("router_event_loop_lag_seconds", max(0.0, lag))
            if lag > 0.1:
                log.warning("event loop was blocked for %.0f ms", lag * 1000)

    async def _snapshot_loop(self) -> None:
        while True:
            await asyncio.sleep(SNAPSHOT_INTERVAL)
            self.metrics.set("router_shadow_queue_depth", float(self.shadow.queue.qsize()))
            if self.open_connections is not None:
                self.metrics.set("router_open_connections", float(self.open_connections()))
            self.snapshots.write(self.metrics)

    async def stop(self) -> None:
        """After the server stopped accepting and in-flight requests completed."""
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self.fleet is not None:
            await self.fleet.stop()
        await self.shadow.stop(self.cfg.limits.drain_timeout_s)
        if self.writer is not None:
            await self.writer.stop(self.cfg.limits.drain_timeout_s)
        for pool in [*self.pools.values(), *self.shadow_pools.values()]:
            await pool.close()
        self.snapshots.write(self.metrics)

    # ---- request entry point ----------------------------------------------------------------
    def on_refused(self, status: int, reason: str) -> None:
        """Counted when the HTTP server refuses a request itself (limits, timeouts, malformed)."""
        self.metrics.inc("router_rejected_requests", (reason,))

    _EVENTS: ClassVar[dict[str, tuple[str, tuple[str, ...]]]] = {
        "request_trailers_dropped": ("router_trailers_dropped", ("request",)),
        "keepalive_timeout": ("router_connections_closed", ("keepalive_timeout",)),
        "header_timeout_idle": ("router_connections_closed", ("header_timeout_idle",)),
        "send_timeout": ("router_connections_closed", ("send_timeout",)),
        "write_paused": ("router_write_paused", ()),
    }

    def on_event(self, name: str) -> None:
        """Connection events of the HTTP server (timeouts, backpressure, dropped trailers)."""
        metric, labels = self._EVENTS.get(name, ("router_connections_closed", (name,)))
        self.metrics.inc(metric, labels)

