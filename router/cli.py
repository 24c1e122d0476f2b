"""``router`` command line. Each subcommand lives in ``router/commands/<name>.py`` and exposes
``register(subparsers)``; registration must stay cheap (heavy imports happen inside the command's
``run``), so ``router --help`` is fast and a broken optional part cannot break the others."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from router import __version__, commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="router",
        description="shadow-router: sticky split, off-path shadow, capture, analysis, canary.",
    )
    parser.add_argument("--version", action="version", version=f"shadow-router {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        try:
            module = importlib.import_module(f"{commands.__name__}.{info.name}")
            module.register(sub)
        except Exception as exc:  # one broken command must not break the others
            _register_broken(sub, info.name, exc)
    return parser


def _register_broken(sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str,
                     exc: Exception) -> None:  # fmt: skip
    message = f"router {name}: unavailable in this installation: {type(exc).__name__}: {exc}"

    def fail(_args: argparse.Namespace) -> int:
        print(message, file=sys.stderr)
        return 3

    p = sub.add_parser(name, help=f"(unavailable: {type(exc).__name__})", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=fail)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except KeyboardInterrupt:
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
