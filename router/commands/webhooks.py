"""``router webhooks --experiment NAME``: deliver the experiment's webhook outbox.

The running controller delivers the outbox; this worker is for when none runs (after the ramp
ended, between controller runs): it waits for the outbox lease, then sends queued and
undeliverable events to the receivers stored in the experiment's shared state (written by
``router canary start`` from its promotion file), with the same signing, retries and delivery
ids. ``--once``: one pass, exit 1 if anything stayed undeliverable."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("webhooks", help="deliver an experiment's webhook outbox")
    p.add_argument("--experiment", required=True)
    p.add_argument("--redis", help="Redis URL (default: $REDIS_URL)")
    p.add_argument("--once", action="store_true", help="one pass, then exit")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between passes")
    p.add_argument("--log-level", default="INFO")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import asyncio

    from router.promotion.clihelp import CliError, fail, redis_url

    try:
        url = redis_url(args)
    except CliError as exc:
        return fail(str(exc))
    return asyncio.run(_run(args, url))


async def _run(args: argparse.Namespace, url: str) -> int:
    import asyncio
    import logging
    import signal

    from router.capture.clients import make_client
    from router.promotion.outbox import Deliverer

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    client = make_client(url, timeout=5.0)
    try:
        d = Deliverer(client, args.experiment)
        if args.once:
            res = await d.deliver_now(timeout_s=600.0)
            if res is None:
                print(f"{args.experiment}: another deliverer holds the outbox")
                return 4
            print(f"{args.experiment}: {res.delivered} delivered, {res.failed} undeliverable, "
                  f"{res.left} left")  # fmt: skip
            return 1 if res.failed else 0
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await d.run(stop, interval_s=args.interval)
        return 0
    finally:
        await client.aclose()
