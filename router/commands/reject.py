"""``router reject --experiment NAME --reviewer ID --reason TEXT``: end the canary (rolls back)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("reject", help="reject a canary; the challenger is rolled back")
    p.add_argument("--experiment", required=True)
    p.add_argument("--reviewer", required=True, help="reviewer id (audited)")
    p.add_argument("--reason", required=True, help="why (audited, sent in webhooks)")
    p.add_argument("--redis", help="Redis URL (default: $REDIS_URL)")
    p.add_argument("--promotion", help="promotion config YAML")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import asyncio
    import time

    from router.promotion import actions
    from router.promotion.clihelp import CliError, fail, promotion_config, redis_url

    try:
        url = redis_url(args)
        cfg = promotion_config(args)
    except CliError as exc:
        return fail(str(exc))
    try:
        res = asyncio.run(
            actions.reject(
                url,
                args.experiment,
                cfg,
                reviewer=args.reviewer,
                reason=args.reason,
                now=time.time(),
            )
        )
    except (actions.NoExperiment, actions.TransitionError) as exc:
        return fail(str(exc), 1)
    for a in res.applied:
        print(f"{a.url}: {a.result}" + (f" ({a.error})" if a.error else ""))
    from router.commands.canary import delivery_line

    print(delivery_line(res.delivery))
    print(f"{args.experiment}: stage {res.state.stage}")
    return 1 if any(a.result == "error" for a in res.applied) else 0
