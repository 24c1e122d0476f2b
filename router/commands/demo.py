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
    p.add_argument("-o", "--report", type=Path, default=None,
                   help="HTML report (default demo-report.html, demo-llm-report.html with --llm)")
    p.add_argument("--llm", action="store_true",
                   help="the streaming story: two local text models streaming OpenAI-compatible "
                   "server-sent events, shadow then canary, time to first token and text "
                   "divergence")
    p.add_argument("--llm-requests", type=int, default=300, help="requests per phase (--llm)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from router.commands.serve import promotion_view

    if args.llm:
        from router.demo.llm_story import LLMDemoOptions
        from router.demo.llm_story import main as llm_main

        return llm_main(
            LLMDemoOptions(
                requests=args.llm_requests,
                seed=args.seed,
                data_dir=args.data_dir.with_name(args.data_dir.name + "-llm"),
                report=args.report or Path("demo-llm-report.html"),
                promotion_view=promotion_view,
            )
        )
    from router.demo.story import DemoOptions, main

    return main(
        DemoOptions(
            shadow_requests=args.shadow_requests,
            split_requests=args.split_requests,
            users=args.users,
            seed=args.seed,
            data_dir=args.data_dir,
            report=args.report or Path("demo-report.html"),
            promotion_view=promotion_view,
        )
    )
