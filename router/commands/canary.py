"""``router canary start|status|rollback|resume``: drive a canary ramp (see router.promotion).

Exit status of ``start``: 0 when promoted (or stopped by SIGINT/SIGTERM), 3 when rolled back,
2 on usage/config errors, 4 when another controller holds the experiment's lease."""

from __future__ import annotations

import argparse
from typing import Any


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--experiment", required=True, help="experiment name (Redis key prefix)")
    p.add_argument("--redis", help="Redis URL (default: $REDIS_URL)")
    p.add_argument(
        "--promotion", help="promotion config YAML (steps, intervals, webhooks, approval)"
    )


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("canary", help="canary ramp with automated rollback and approval")
    csub = p.add_subparsers(dest="canary_command", metavar="ACTION")
    csub.required = True

    s = csub.add_parser("start", help="start (or resume) the controller for an experiment")
    _common(s)
    s.add_argument("--policy", help="analyzer policy YAML (gates), e.g. configs/policy.yaml")
    s.add_argument(
        "--routers",
        default="",
        help="router base URLs, comma-separated: only for routers that do not share the "
        "experiment's Redis (the others follow its live state)",
    )
    s.add_argument(
        "--analyzer",
        metavar="MODULE:FUNC",
        help="alternative analyse callable (default: router.analysis.build_report + --policy)",
    )
    s.add_argument(
        "--wait-lease", type=float, default=0.0, help="seconds to wait for another controller"
    )
    s.add_argument(
        "--new-run",
        action="store_true",
        help="start a new ramp when the stored one already ended (promoted or rolled back)",
    )
    s.add_argument(
        "--archive",
        metavar="URI",
        help="a `router archive` location: the part of a step's window Redis already trimmed "
        "is read from it",
    )
    s.add_argument("--log-level", default="INFO")
    s.set_defaults(func=run, action="start")

    st = csub.add_parser("status", help="stage, step, approvals, last verdict, history")
    _common(st)
    st.add_argument("--json", action="store_true", help="print the raw state as JSON")
    st.set_defaults(func=run, action="status")

    rb = csub.add_parser("rollback", help="roll back now: split 0 and the rollback mirror")
    _common(rb)
    rb.add_argument("--reason", required=True)
    rb.add_argument("--by", default="operator", help="who is rolling back (audited)")
    rb.set_defaults(func=run, action="rollback")

    rs = csub.add_parser("resume", help="resume a ramp paused by a hold")
    _common(rs)
    rs.add_argument("--by", default="operator", help="who is resuming (audited)")
    rs.set_defaults(func=run, action="resume")


def run(args: argparse.Namespace) -> int:
    import asyncio

    from router.promotion.clihelp import CliError, fail

    try:
        return asyncio.run(_run(args))
    except CliError as exc:
        return fail(str(exc))


async def _run(args: argparse.Namespace) -> int:
    import time

    from router.promotion import actions
    from router.promotion.clihelp import fail, print_json, promotion_config, redis_url

    url = redis_url(args)
    if args.action == "start":
        return await _start(args, url)
    try:
        if args.action == "status":
            st = await actions.status(url, args.experiment)
            if args.json:
                print_json(st)
            else:
                print(format_status(st))
            return 0
        cfg = promotion_config(args)
        if args.action == "rollback":
            res = await actions.rollback(
                url, args.experiment, cfg, by=args.by, reason=args.reason, now=time.time()
            )
        else:
            res = await actions.resume(url, args.experiment, cfg, by=args.by, now=time.time())
    except (actions.NoExperiment, actions.TransitionError) as exc:
        return fail(str(exc), 1)
    for a in res.applied:
        print(f"{a.url}: {a.result}" + (f" ({a.error})" if a.error else ""))
    print(delivery_line(res.delivery))
    print(
        f"{args.experiment}: stage {res.state.stage}; audit seq {[r['seq'] for r in res.records]}"
    )
    return 1 if any(a.result == "error" for a in res.applied) else 0


async def _start(args: argparse.Namespace, url: str) -> int:
    import asyncio
    import logging
    import signal

    from router.promotion.clihelp import fail, promotion_config
    from router.promotion.controller import Controller, ControllerOptions
    from router.promotion.lease import LeaseHeld
    from router.promotion.routers import RouterError
    from router.promotion.store import LeaseLost

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    cfg = promotion_config(args)
    analyse = None
    if args.analyzer:
        import importlib

        mod, _, name = args.analyzer.partition(":")
        try:
            analyse = getattr(importlib.import_module(mod), name)
        except (ImportError, AttributeError, ValueError) as exc:
            return fail(f"--analyzer {args.analyzer}: {exc}")
    routers = [u.strip() for u in args.routers.split(",") if u.strip()]
    ctl = Controller(
        ControllerOptions(
            experiment=args.experiment,
            redis_url=url,
            cfg=cfg,
            routers=routers,
            policy=args.policy,
            lease_wait_s=args.wait_lease,
            new_run=args.new_run,
            archive=args.archive,
        ),
        analyse=analyse,
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, ctl.stop)
    try:
        state = await ctl.run()
    except (LeaseHeld, LeaseLost) as exc:
        return fail(str(exc), 4)
    except RouterError as exc:
        return fail(f"routers: {exc}", 1)
    except ImportError as exc:
        return fail(f"analyzer unavailable ({exc}); install router.analysis or pass --analyzer", 1)
    print(f"{args.experiment}: stage {state.stage}")
    return 3 if state.stage == "rolled_back" else 0


def delivery_line(p: Any) -> str:
    """What became of a CLI action's webhooks (an :class:`router.promotion.outbox.Pass`)."""
    if p is None:
        return "webhooks: queued in the outbox; the running controller (router webhooks) sends them"
    line = f"webhooks: {p.delivered} delivered"
    if p.failed:
        line += f", {p.failed} UNDELIVERABLE (kept in the outbox; see canary status)"
    return line


def format_status(st: dict[str, Any]) -> str:
    import datetime as dt
    import time

    s = st["state"]

    def ts(t: float | None) -> str:
        if t is None:
            return "-"
        return dt.datetime.fromtimestamp(t, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")

    steps = s["steps"]
    step = steps[min(s["step"], len(steps) - 1)]
    lines = [
        f"experiment   {s['experiment']}",
        f"stage        {s['stage']}" + ("  (ON HOLD)" if s.get("held") else ""),
        f"step         {s['step'] + 1}/{len(steps)} {step['name']}"
        f" since {ts(s['step_started_at'])}",
        f"target       split={st['target']['split']:g} mirror={st['target']['mirror']:g}",
        f"champion     {s['champion']['version']} ({s['champion']['url']})",
        f"challenger   {s['challenger']['version']} ({s['challenger']['url']})",
        f"routers      {', '.join(s['routers']) or '(shared live state in Redis)'}",
        f"lease        {st['lease_holder'] or '(no controller running)'}",
        f"audit        {st['audit_records']} records",
    ]
    if s.get("rollback_target"):
        rt = s["rollback_target"]
        lines.append(f"rollback to  {rt['version']} ({rt['url']})")
    if s.get("held"):
        lines.append(f"hold         {'; '.join(s['held']['reasons'])}")
    lv = s.get("last_verdict")
    if lv:
        lines.append(f"last verdict {lv['action']} at {ts(lv['at'])}: {'; '.join(lv['reasons'])}")
        for g in lv.get("gates", []):
            mark = "pass" if g.get("passed") else "FAIL"
            lines.append(
                f"  gate {g.get('name')}: {mark} value={g.get('value')} "
                f"threshold={g.get('threshold')}"
            )
    ap = s.get("approval")
    if ap:
        lines.append(
            f"approval     requested {ts(ap['requested_at'])}, "
            f"{len(ap['approvals'])}/{ap['required']} approvals"
        )
        for a in ap["approvals"]:
            flag = "  POSSIBLE RUBBER STAMP" if a.get("possible_rubber_stamp") else ""
            lines.append(f"  by {a['reviewer']} at {ts(a['at'])}{flag}")
    if s.get("outcome"):
        lines.append(f"outcome      {s['outcome']}")
    if st["metrics"]:
        lines.append(
            "metrics      " + " ".join(f"{k}={v}" for k, v in sorted(st["metrics"].items()))
        )
    live = st.get("live")
    if live:
        lines.append(f"live state   v{live.get('version')} split={live.get('split')} "
                     f"mirror={live.get('mirror')} by {live.get('updated_by')}")  # fmt: skip
    now = time.time()
    for rid, hb in sorted((st.get("replicas") or {}).items()):
        age = now - float(hb.get("ts", 0))
        flag = "  STALE" if age > 5 else ""
        if live and hb.get("version") != live.get("version") and not flag:
            flag = "  BEHIND"
        lines.append(f"  replica {rid}: v{hb.get('version')} ({hb.get('source')}), "
                     f"heartbeat {age:.1f}s ago{flag}")  # fmt: skip
    conv = st.get("convergence")
    if conv:
        lines.append(
            f"convergence  v{conv['version']}: "
            + ("converged" if conv["converged"] else f"NOT converged, behind {conv['behind']}")
            + f" in {conv['waited_s']}s over {conv['replicas']} replica(s)"
            + (f"; stale {conv['stale']}" if conv.get("stale") else "")
        )
    ob = st.get("outbox")
    if ob:
        lines.append(f"webhooks     {ob['pending']} pending, {ob['undeliverable']} undeliverable")
        for f in ob["failed"]:
            lines.append(f"  {f['id']} {f['event']}: {f['error']}")
    lines.append("history")
    for h in s["history"]:
        lines.append(
            f"  {ts(h['at'])}  {h['event']:<20} {h['from']} -> {h['to']} (step {h['step']})"
        )
    return "\n".join(lines)
