"""``router rollup [-c CONFIG] [--archive URI] [--experiment NAME] [--policy P] [--kind K]
[--lateness S]``.

Writes the hourly rollups of an archive (:mod:`router.analysis.rollups`): for every hour
partition that ended ``--lateness`` seconds ago (default 6 h, covering outcome lateness) and
has no rollup for this policy, kind and set of files yet, the analyzer's aggregate of its
records with the outcomes archived so far; the hours already rolled up are checked against the
outcomes archived since (re-stamped, or rebuilt when one joins their requests). With ``-c`` the
archive, experiment, prediction kind and lateness (``archive.rollup_lateness_s``) default to the
config's. Run it from cron after ``router archive``; ``router analyze --archive URI --rollups``
then merges them. Exit codes: 0 done, 2 bad arguments, config or policy, 3 the archive
unreachable.
"""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("rollup", help="write hourly rollups of a Parquet archive")
    p.add_argument("-c", "--config", help="router config (archive, experiment, kind, lateness)")
    p.add_argument("--archive", metavar="URI", help="directory or s3://… (default: the config's)")
    p.add_argument("--experiment", help="default: experiment.name of the config")
    p.add_argument("--policy", help="policy YAML (default: built-in defaults)")
    p.add_argument("--kind", choices=["score", "class", "vector", "value", "text"],
                   help="default: experiment.prediction_kind of the config, else score")
    p.add_argument("--lateness", type=float, metavar="SECONDS",
                   help="an hour is rolled up this long after it ends (default: "
                   "archive.rollup_lateness_s, 21600)")  # fmt: skip
    p.add_argument("--rebuild", action="store_true", help="rewrite existing rollups too")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging

    from router.analysis.policy import load_policy
    from router.analysis.rollups import build_rollups
    from router.archive.store import StoreError
    from router.config import ConfigError

    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(message)s")
    if args.config:
        from router.commands.archive import archive_uri
        from router.config import load_config

        try:
            cfg = load_config(args.config)
        except ConfigError as exc:
            print(f"router rollup: invalid config: {exc}", file=sys.stderr)
            return 2
        args.archive = archive_uri(cfg, args.archive)
        args.experiment = args.experiment or cfg.experiment.name
        args.kind = args.kind or cfg.experiment.prediction_kind
        args.lateness = cfg.archive.rollup_lateness_s if args.lateness is None else args.lateness
    if not args.archive or not args.experiment:
        print("router rollup: needs --archive and --experiment (or -c CONFIG)", file=sys.stderr)
        return 2
    args.kind = args.kind or "score"
    args.lateness = 21_600.0 if args.lateness is None else args.lateness
    if args.lateness < 0:
        print("router rollup: --lateness must not be negative", file=sys.stderr)
        return 2
    try:
        policy = load_policy(args.policy)
    except ConfigError as exc:
        print(f"router rollup: invalid policy: {exc}", file=sys.stderr)
        return 2
    try:
        hours = build_rollups(args.archive, args.experiment, policy, kind=args.kind,
                              lateness_s=args.lateness, rebuild=args.rebuild)  # fmt: skip
    except StoreError as exc:
        print(f"router rollup: {exc}", file=sys.stderr)
        return 3
    print(f"router rollup: {len(hours)} hours rolled up")
    return 0
