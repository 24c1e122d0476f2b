"""``router demo``: the whole product on this machine in one command."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="run the whole story locally: Redis, models, router, report")
    p.add_argument("--shadow-requests", type=int, default=4000)
    p.add_argument("--split-requests", type=int, default=14000)
    p.add_argument("--users", type=int, default=2000, help="distinct users (Zipf popularity)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--data-dir", type=Path, default=Path(".router-data/demo"))
    p.add_argument("-o", "--report", type=Path, default=Path("demo-report.html"))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from router.commands.serve import promotion_view
    from router.demo.story import DemoOptions, main

    return main(
        DemoOptions(
            shadow_requests=args.shadow_requests,
            split_requests=args.split_requests,
            users=args.users,
            seed=args.seed,
            data_dir=args.data_dir,
            report=args.report,
            promotion_view=promotion_view,
        )
    )
