"""The canary controller: one loop per experiment, safe to kill and restart.

Each tick (every ``check_interval_s``):

1. read the records of ``<exp>:pairs`` stored since the last tick (per stream, after the last id
   read; the first read of a step starts at the step's start), fold them into the step's
   cumulative guardrail tallies and run the always-valid guardrails (pure); a breach rolls back
   at once;
2. when the step has been held for ``min_duration_s`` and ``analysis_interval_s`` passed since the
   last analysis, run the analyzer on the step's window (in a thread), intersect its gates'
   confidence sequences with those of the step's earlier looks (the running state in Redis,
   :func:`router.analysis.gates.running.apply_running`) and apply the decision;
3. keep the fleet's shared live state at the state's target (and reconcile routers listed
   with ``--routers`` through their admin API; compare before set, so a no-op when in sync).

Routers that share the experiment's Redis follow its live state; the controller commits the
target into it with every transition, then waits (``fleet.converge_timeout_s``) until every
replica's heartbeat reports the new version before the step's clock starts (the step's
``step_started_at`` moves to the convergence time), and reports stale and lagging replicas
(log, ``canary status``, counters). No list of router addresses is needed: a new pod reads the
live state before it is ready.

Both kinds of checks look many times per step; their intervals are confidence sequences, so
each keeps its false-rollback and false-promote rates at or below alpha over all the looks.

Transitions go through :meth:`PromotionStore.update` (atomic with their audit records, the live
state and the webhook outbox, fenced by the lease), then listed routers are reconciled
(:func:`router.promotion.commit.commit_and_apply`); a background task delivers the outbox
(:mod:`router.promotion.outbox`); the analyzer is called through
:mod:`router.promotion.analyzer`. A restarted controller loads the state from Redis, re-applies
the target (no change if already applied) and continues the same step from its original start
time: nothing is repeated.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from router.capture.clients import make_client
from router.promotion import machine
from router.promotion.analyzer import Analyse, analyzer_from_policy, verdict_from_report
from router.promotion.commit import commit_and_apply
from router.promotion.config import PromotionConfig
from router.promotion.contest import ArmTallies
from router.promotion.fleet import converge
from router.promotion.guardrails import GuardrailState
from router.promotion.guardrails import evaluate as evaluate_guardrails
from router.promotion.lease import Lease
from router.promotion.outbox import Deliverer, publish_receivers
from router.promotion.routers import Applied, RouterError, RouterFleet
from router.promotion.state import ACTIVE, TERMINAL, Pin, State, Transition
from router.promotion.store import LeaseLost, PromotionStore, live_changes

log = logging.getLogger("router.promotion.controller")


def _dropping(
    name: str, result: dict[str, Any], now: float, same_step: Callable[[State | None], bool]
) -> Callable[[State | None], Transition | None]:
    def fn(cur: State | None) -> Transition | None:
        if cur is None or not same_step(cur):
            return None
        return machine.on_contender_guardrails(cur, name, result, now=now)

    return fn


@dataclass
class StepGuard:
    """The current step's guardrail tallies and, per pair stream, the last entry id read."""

    key: tuple[str, int, float]
    since: float
    tallies: GuardrailState = field(default_factory=GuardrailState)
    cursors: dict[str, str] = field(default_factory=dict)
    arms: ArmTallies | None = None  # a contest: one tally per challenger's view


@dataclass
class ControllerOptions:
    experiment: str
    redis_url: str
    cfg: PromotionConfig
    routers: list[str] = field(default_factory=list)  # only for routers not sharing Redis
    policy: str | None = None
    token: str | None = None  # admin token; default: env var named by cfg.routers.token_env
    lease_wait_s: float = 0.0
    actor: str = "controller"
    new_run: bool = False  # start a new ramp when the stored one is promoted or rolled back
    archive: str | None = None  # a `router archive` location: windows Redis already trimmed


class Controller:
    def __init__(
        self,
        opts: ControllerOptions,
        analyse: Analyse | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.opts = opts
        self.cfg = opts.cfg
        self.exp = opts.experiment
        self.clock = clock
        self._analyse = analyse
        self.redis: Any = None
        self.store: PromotionStore | None = None
        self.lease: Lease | None = None
        self.fleet: RouterFleet | None = None
        self.deliverer: Deliverer | None = None
        self._deliver_stop = asyncio.Event()
        self._deliver_task: asyncio.Task[None] | None = None
        self.convergence: dict[str, Any] | None = None  # the last wait for the fleet
        self.state: State | None = None
        self._stop = asyncio.Event()
        self._reader: Any = None  # blocking Redis client of _read
        self._guard: StepGuard | None = None
        self.ticks = 0
        self.tick_errors = 0

    @property
    def analyse(self) -> Analyse:
        if self._analyse is None:
            self._analyse = analyzer_from_policy(self.opts.policy, self.opts.redis_url,
                                                 self.opts.archive)  # fmt: skip
        return self._analyse

    def stop(self) -> None:
        """Graceful stop: finish the tick, release the lease."""
        self._stop.set()

    async def run(self) -> State:
        """Run until the experiment is promoted or rolled back (or :meth:`stop`)."""
        _ = self.analyse  # fail fast (before taking the lease) when the analyzer is unavailable
        self.redis = make_client(self.opts.redis_url, timeout=5.0)
        self.store = PromotionStore(self.redis, self.exp, self.cfg.audit.dir)
        self.lease = Lease(self.redis, self.exp, self.cfg.lease.ttl_s)
        try:
            await self.lease.acquire(self.opts.lease_wait_s)
        except BaseException:
            await self.redis.aclose()
            raise
        renewer = asyncio.create_task(self._renew(), name="lease-renew")
        clean = False
        try:
            state = await self._setup()
            while not self._stop.is_set():
                try:
                    state = await self.tick()
                except (LeaseLost, asyncio.CancelledError):
                    raise
                except Exception:
                    # a Redis blip, an unreachable router or an analyzer crash must not end the
                    # ramp: log, count and retry on the next tick (guardrails keep running)
                    log.exception(
                        "%s: tick failed; retrying in %.1fs", self.exp, self.cfg.check_interval_s
                    )
                    self.tick_errors += 1
                    with contextlib.suppress(Exception):
                        await self.store.count("tick_errors")
                if state.stage in TERMINAL:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.cfg.check_interval_s)
            try:  # records a CLI command committed during the last tick (a rollback that ended it)
                await self.store.sync_mirror()
            except Exception:
                log.exception("%s: the audit mirror could not be brought up to date", self.exp)
            clean = True
            return state
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            await self._teardown(release=clean)

    async def _setup(self) -> State:
        assert self.store is not None and self.lease is not None
        token = self.opts.token or os.environ.get(self.cfg.routers.token_env, "")
        state = await self.store.load()
        urls = list(state.routers) if state is not None else self.opts.routers
        if state is not None and self.opts.routers and list(self.opts.routers) != urls:
            log.warning(
                "resuming with the stored router list %s (ignoring %s)", urls, self.opts.routers
            )
        r = self.cfg.routers
        self.fleet = RouterFleet(
            urls, token, prefix=r.admin_prefix, timeout_s=r.timeout_s, retries=r.retries
        )
        await self.fleet.__aenter__()
        await publish_receivers(self.redis, self.exp, self.cfg.webhooks)
        self.deliverer = Deliverer(self.redis, self.exp, lease_ttl_s=self.cfg.lease.ttl_s)
        self._deliver_task = asyncio.create_task(
            self.deliverer.run(self._deliver_stop, interval_s=min(self.cfg.check_interval_s, 1.0)),
            name="webhook-outbox",
        )
        await self.store.sync_mirror()
        if state is None or (self.opts.new_run and state.stage in TERMINAL):
            previous = state
            champion, challenger = await self._current_pins(urls)
            contenders = await self._current_challengers(urls)
            done = await commit_and_apply(
                self.store,
                lambda cur: (
                    None
                    if cur is not None and (previous is None or cur != previous)
                    else machine.start(
                        experiment=self.exp,
                        cfg=self.cfg,
                        champion=champion,
                        challenger=challenger,
                        routers=urls,
                        policy=self.opts.policy,
                        actor=self.opts.actor,
                        now=self.clock(),
                        previous=previous.outcome if previous is not None else None,
                        contenders=contenders,
                    )
                ),
                fleet=self.fleet,
                lease_token=self.lease.token,
            )
            state = done[0].state if done else await self.store.load()
            if state is None:
                raise RuntimeError("controller state vanished during start")
            state = await self._after_commit(state)
        else:
            if state.stage in TERMINAL:
                log.info("%s: already %s (--new-run starts a new ramp)", self.exp, state.stage)
            else:
                log.info("%s: resuming at stage %s step %d", self.exp, state.stage, state.step)
            await self._reconcile(state)
        self.state = state
        return state

    async def _current_pins(self, urls: list[str]) -> tuple[Pin, Pin]:
        """The champion and challenger of a new ramp: from the fleet's live state in Redis, else
        from the listed routers."""
        assert self.store is not None and self.store.plane is not None
        live = await self.store.plane.read_live()
        if live is not None:
            return Pin.from_json(live["champion"]), Pin.from_json(live["challenger"])
        if not urls:
            raise RouterError(
                f"no live state for experiment {self.exp!r} in Redis: start the routers "
                "(router serve, capture on this Redis) first, or pass --routers"
            )
        assert self.fleet is not None
        return await self.fleet.current_pins()

    async def _current_challengers(self, urls: list[str]) -> list[tuple[str, Pin]]:
        """Every challenger of a new ramp (name, pin): from the fleet's live state in Redis,
        else from the listed routers."""
        assert self.store is not None and self.store.plane is not None
        live = await self.store.plane.read_live()
        if live is not None:
            return [(str(c["name"]), Pin(str(c["url"]), str(c["version"])))
                    for c in live.get("challengers") or []]  # fmt: skip
        if not urls:
            return []
        assert self.fleet is not None
        return await self.fleet.current_challengers()

    async def _stop_delivery(self) -> None:
        """Stop the outbox task; a last bounded pass sends what the final transitions queued."""
        if self._deliver_task is None:
            return
        self._deliver_stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._deliver_task, self.cfg.webhooks.timeout_s * 2)
        d = self.deliverer
        if d is not None:
            w = self.cfg.webhooks
            budget = min(w.timeout_s * w.max_attempts + sum(
                min(w.backoff_initial_s * 2**i, w.backoff_max_s) for i in range(w.max_attempts)
            ), 60.0)  # fmt: skip
            with contextlib.suppress(Exception):
                await d.deliver_now(budget)
        self._deliver_task = None

    async def _teardown(self, release: bool) -> None:
        await self._stop_delivery()
        if self.fleet is not None:
            await self.fleet.__aexit__(None, None, None)
        if self.lease is not None and release:
            with contextlib.suppress(Exception):
                await self.lease.release()
        if self.redis is not None:
            await self.redis.aclose()
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    async def _read(self, since: float, until: float, outcomes: bool = False) -> list[Any]:
        """Captured records (or outcomes) of the window, through the capture reader (every
        shard), in a thread: the blocking client never stalls lease renewal."""
        from router.capture.clients import make_sync_client
        from router.capture.reader import read_window

        if self._reader is None:
            self._reader = make_sync_client(self.opts.redis_url)
        client = self._reader
        return await asyncio.to_thread(
            lambda: list(read_window(client, self.exp, outcomes=outcomes, since=since, until=until))
        )

    async def _read_new(self, g: StepGuard) -> list[dict[str, Any]]:
        """Records of every pair stream stored after the last one read for this step (from the
        step's start on the first read): each record is counted once, and a tick reads only
        what arrived since the previous one."""
        from router.capture.clients import make_sync_client
        from router.capture.reader import iter_stream, stream_keys

        if self._reader is None:
            self._reader = make_sync_client(self.opts.redis_url)
        client = self._reader

        def read() -> list[dict[str, Any]]:
            out = []
            for k in stream_keys(client, self.exp):
                last = g.cursors.get(k)
                for e in iter_stream(client, k, since=g.since, after=last):
                    out.append(e.doc)
                    g.cursors[k] = e.id
            return out

        return await asyncio.to_thread(read)

    async def _with_running(
        self, report: dict[str, Any], key: tuple[str, int, float]
    ) -> dict[str, Any]:
        """The report's gates intersected with the step's earlier looks (see the module doc)."""
        from router.analysis.gates.running import apply_running

        gates = report.get("gates")
        if not gates or not all(isinstance(g, dict) and "state" in g for g in gates):
            return report  # not an analyzer report with gate states: nothing to intersect
        assert self.store is not None
        prior = await self.store.load_running(key)
        gates, decision, running = apply_running(report, prior)
        await self.store.save_running(key, running)
        return dict(report, gates=gates, decision=decision)

    async def _renew(self) -> None:
        assert self.lease is not None
        interval = self.cfg.lease.ttl_s / 3
        while True:
            await asyncio.sleep(interval)
            try:
                ok = await self.lease.renew()
            except Exception as exc:
                log.error("lease renew failed: %s", exc)
                ok = self.lease.valid
            if not ok:
                log.error("%s: lease lost; stopping", self.exp)
                self._stop.set()
                return

    async def _reconcile(self, state: State) -> list[Applied]:
        """Keep the shared live state (and listed routers) at the state's target: a change made
        by hand in between is undone, audited like any other change."""
        assert self.fleet is not None and self.lease is not None and self.store is not None
        if not self.lease.valid:
            raise LeaseLost("lease expired; not touching the routers")
        note = f"promotion {state.stage} step {state.step}"
        plane = self.store.plane
        assert plane is not None
        live = await plane.read_live()
        if live is not None:
            changes = live_changes(live, machine.desired(state))
            if changes:
                # a commit (state and live state together: an operator's approve, reject or
                # rollback) since ``state`` was read moves the target and the live state at
                # once: that is not drift, and "restoring" the stale target would undo it for
                # a moment (the committer reconciles the routers itself; the next tick too)
                fresh = await self.store.load()
                if fresh is not None and machine.desired(fresh) != machine.desired(state):
                    log.info("%s: the target moved under this tick (now %s); not reconciling "
                             "the stale one", self.exp, fresh.stage)  # fmt: skip
                    return []
                log.warning("%s: live state drifted from the target (%s); restoring", self.exp,
                            changes)  # fmt: skip
                done = await plane.change_live(
                    changes, expected=None, actor=self.opts.actor, note=f"{note} (reconcile)"
                )
                if done.live is not None:
                    await self.converge(int(done.live["version"]))
        if not self.fleet.urls:
            return []
        return await self.fleet.reconcile(machine.desired(state), note=note)

    async def converge(self, version: int) -> dict[str, Any]:
        """Wait for the fleet to apply ``version`` (see :func:`router.promotion.fleet.converge`)."""
        assert self.store is not None
        self.convergence = await converge(self.store, self.cfg.fleet, version)
        return self.convergence

    async def _after_commit(self, state: State) -> State:
        """After a commit that changed the live state: wait for the fleet, then start the
        step's clock at the convergence time (so its window holds only the new split)."""
        assert self.store is not None and self.lease is not None
        live = self.store.last_live
        self.store.last_live = None
        if live is None:
            return state
        result = await self.converge(int(live["version"]))
        at = float(result["at"])
        if state.stage not in ACTIVE or state.step_started_at >= at:
            return state
        key = (state.stage, state.step, state.step_started_at)
        done = await self.store.update(
            lambda cur: (
                Transition(replace(cur, step_started_at=at))
                if cur is not None and (cur.stage, cur.step, cur.step_started_at) == key
                else None
            ),
            lease_token=self.lease.token,
        )
        return done[0].state if done else state

    async def _commit(self, fn: Callable[[State | None], Transition | None]) -> State:
        assert self.store is not None and self.lease is not None
        done = await commit_and_apply(
            self.store, fn, fleet=self.fleet, lease_token=self.lease.token
        )
        if done is not None:
            t, records, _ = done
            for rec in records:
                log.warning(
                    "%s: %s %s -> %s (%s)",
                    self.exp,
                    rec["event"],
                    rec["stage_from"],
                    rec["stage_to"],
                    "; ".join(rec["data"].get("reasons", [])),
                )
            return await self._after_commit(t.state)
        state = await self.store.load()
        assert state is not None
        return state

    async def _run_analysis(
        self,
        pairs: list[dict[str, Any]],
        outcomes: list[dict[str, Any]],
        *,
        split: float,
        since: float,
        until: float,
        shares: dict[str, float] | None = None,
    ) -> dict[str, Any]:
        """Run the analyzer off the event loop (it is CPU-bound), so lease renewal continues."""
        fn = self.analyse
        kwargs: dict[str, Any] = {
            "experiment": self.exp,
            "split": split,
            "since": since,
            "until": until,
        }
        if shares is not None:  # several challengers (the analyser then takes ``shares=``)
            kwargs["shares"] = shares
        if inspect.iscoroutinefunction(fn):
            result = await fn(pairs, outcomes, **kwargs)
        else:
            result = await asyncio.to_thread(lambda: fn(pairs, outcomes, **kwargs))
            if inspect.isawaitable(result):
                result = await result
        if not isinstance(result, dict):
            raise TypeError(f"analyser returned {type(result).__name__}, expected a report dict")
        return result

    async def _contender_guardrails(
        self, state: State, now: float, since: float, same_step: Callable[[State | None], bool]
    ) -> State:
        assert self._guard is not None and self._guard.arms is not None
        for c in state.live_contenders:
            tally = self._guard.arms.states.get(c.name)
            if tally is None:
                continue
            g = evaluate_guardrails(tally, self.cfg.guardrails)
            if not g.breached:
                continue
            result = {
                "breached": True, "reasons": g.reasons,
                "checks": [x.to_json() for x in g.checks],
                "counts": {"records": tally.records, "champion_calls": g.champion.calls,
                           "challenger_calls": g.challenger.calls, "challenger": c.name},
                "window": {"since": since, "until": now},
            }  # fmt: skip
            state = await self._commit(_dropping(c.name, result, now, same_step))
        return state

    async def tick(self) -> State:
        """One control step; returns the (possibly new) state."""
        assert self.store is not None and self.lease is not None
        self.ticks += 1
        state = await self.store.load()
        if state is None:
            raise RuntimeError(f"{self.exp}: no controller state")
        await self.store.sync_mirror()  # picks up records committed by CLI commands
        if state.stage in TERMINAL:
            await self._reconcile(state)
            self.state = state
            return state
        now = self.clock()
        key = (state.stage, state.step, state.step_started_at)
        # the step's traffic starts once every router applied it: skip the settling time, or
        # units first seen under the old split would count as a sample-ratio mismatch
        since = state.step_started_at + self.cfg.settle_s
        if self._guard is None or self._guard.key != key:
            self._guard = StepGuard(key, since)  # a new step (or a restart): a new sequence
        new_records = await self._read_new(self._guard)
        self._guard.tallies.add(new_records)
        if state.contenders:
            if self._guard.arms is None:
                self._guard.arms = ArmTallies([c.name for c in state.contenders])
            self._guard.arms.add(new_records)

        def same_step(cur: State | None) -> bool:
            return cur is not None and (cur.stage, cur.step, cur.step_started_at) == key

        guard = evaluate_guardrails(self._guard.tallies, self.cfg.guardrails)
        breached = guard.breached
        if state.contenders:  # each challenger against the champion: a loser is dropped alone
            state = await self._contender_guardrails(state, now, since, same_step)
            breached = False
        if breached:
            result = {
                "breached": True,
                "reasons": guard.reasons,
                "checks": [c.to_json() for c in guard.checks],
                "counts": {
                    "records": self._guard.tallies.records,
                    "champion_calls": guard.champion.calls,
                    "challenger_calls": guard.challenger.calls,
                    "champion_errors": guard.champion.errors,
                    "challenger_errors": guard.challenger.errors,
                },
                "window": {"since": since, "until": now},
            }
            state = await self._commit(
                lambda cur: (
                    machine.on_guardrails(cur, result, now=now)
                    if cur is not None and same_step(cur)
                    else None
                )
            )
        elif machine.analysis_due(state, now, self.cfg.analysis_interval_s):
            pairs: list[Any] = []
            outcomes: list[Any] = []
            if not getattr(self.analyse, "streaming", False):  # else it streams from Redis
                pairs = await self._read(since, now)
                outcomes = await self._read(since, now, outcomes=True)
            split = state.current_step.split
            shares = None
            if state.contenders:  # the live challengers' shares (A/B/n SRM)
                target = machine.desired(state)
                live = {c.name for c in state.live_contenders}
                shares = {s.name: s.split for s in target.challengers if s.name in live}
                split = next(iter(shares.values()), split)
            report = await self._run_analysis(pairs, outcomes, split=split, since=since,
                                              until=now, shares=shares)  # fmt: skip
            report = await self._with_running(report, key)
            verdict = verdict_from_report(report, since, now)
            decided = self.clock()  # a new step starts now, not when its analysis began
            state = await self._commit(
                lambda cur: (
                    machine.on_verdict(cur, verdict, now=decided)
                    if cur is not None
                    and same_step(cur)
                    and cur.last_analysis_at == state.last_analysis_at
                    else None
                )
            )
        await self._reconcile(state)
        self.state = state
        return state
