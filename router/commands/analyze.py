"""``router analyze``: the shadow / champion-challenger report and the promotion decision.

Reads ``<experiment>:pairs`` and ``<experiment>:outcomes`` from Redis (``--redis``) or JSONL
exports (``--pairs``/``--outcomes``), or generates a seeded synthetic data set
(``--synthetic N``). Exit codes: 0 report written, 2 bad arguments, policy or data (one line
on stderr naming the argument or file: a window that selects nothing, a truncated gzip, an
experiment with no records while others are present, a policy warning with ``--strict``), 3
data source unreachable.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from router.analysis.policy import Policy
    from router.analysis.reader import Pages, Source


def _time_arg(text: str) -> float:
    from router.capture.reader import parse_time

    try:
        value = parse_time(text)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected unix seconds or ISO-8601, got {text!r}")
    return value


def _one_line_errors(p: argparse.ArgumentParser) -> None:
    """Argument errors as one line (argparse prints the whole usage first)."""

    def error(message: str) -> NoReturn:
        p.exit(2, f"router analyze: {message} (see router analyze --help)\n")

    p.error = error  # type: ignore[method-assign]


def window_problem(args: argparse.Namespace, now: float) -> str | None:
    """Why the window arguments select nothing (reversed, in the future, in milliseconds),
    naming the argument; None when they may select something."""
    from router.capture.records import FUTURE_SLACK_S, TS_MIN, TS_MS

    pairs = (("since", "until"), ("reference_since", "reference_until"))
    for lo_name, hi_name in pairs:
        lo, hi = getattr(args, lo_name), getattr(args, hi_name)
        for name, value in ((lo_name, lo), (hi_name, hi)):
            flag = "--" + name.replace("_", "-")
            if value is not None and value >= TS_MS:
                return (f"{flag} {value:.0f} looks like milliseconds (unix seconds expected: "
                        f"{value / 1000:.3f})")  # fmt: skip
        lo_flag, hi_flag = "--" + lo_name.replace("_", "-"), "--" + hi_name.replace("_", "-")
        if lo is not None and hi is not None and lo > hi:
            return f"{lo_flag} {lo:.3f} is after {hi_flag} {hi:.3f}: the window selects nothing"
        if lo is not None and lo > now + FUTURE_SLACK_S:
            return f"{lo_flag} {lo:.3f} is in the future: the window selects nothing"
        if hi is not None and hi < TS_MIN:
            return f"{hi_flag} {hi:.3f} is before 2000-01-01: the window selects nothing"
    return None


def redis_url_problem(url: str) -> str | None:
    """Why ``url`` is not a Redis URL the analyzer can use, or None."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
    except ValueError as exc:
        return str(exc)
    scheme = parts.scheme
    if scheme in ("redis+cluster", "rediss+cluster"):
        hosts = parts.netloc.rpartition("@")[2]
        if not hosts:
            return "a cluster URL needs at least one host:port"
        for seed in hosts.split(","):
            host, _, port = seed.rpartition(":") if ":" in seed else (seed, "", "6379")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                return f"bad cluster node {seed!r} (expected host:port)"
        return None
    from redis.connection import parse_url

    try:
        parse_url(url)
    except ValueError as exc:
        return str(exc)
    return None


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return v


def _executor(text: str) -> str:
    if text in ("threads", "processes"):
        return text
    scheme, sep, rest = text.partition("://")
    host, _, port = rest.rpartition(":")
    if scheme in ("dask", "tcp", "tls") and sep and host and port.isdigit():
        return text
    raise argparse.ArgumentTypeError(
        f"expected threads, processes or dask://HOST:PORT, got {text!r}"
    )


def _shares(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in text.split(","):
        name, sep, value = item.strip().partition("=")
        if not sep or not name.strip():
            raise argparse.ArgumentTypeError(f"expected NAME=F[,NAME=F...], got {item!r}")
        out[name.strip()] = _fraction(value.strip())
    if sum(out.values()) > 1.0 + 1e-9:
        raise argparse.ArgumentTypeError(f"the shares sum to {sum(out.values()):g}, over 1")
    return out


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("analyze", help="analyse captured pairs and outcomes; decide promotion")
    p.add_argument("--experiment", required=True)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--redis", help="Redis URL (default $REDIS_URL)")
    src.add_argument("--pairs", help="records JSONL (from `router export`), .gz allowed")
    src.add_argument("--synthetic", type=int, metavar="N", help="analyse N synthetic records")
    p.add_argument("--archive", metavar="URI",
                   help="a Parquet archive written by `router archive` (directory or s3://…); "
                   "with --redis, the archive for what the streams no longer hold")  # fmt: skip
    p.add_argument("--outcomes", help="outcomes JSONL (with --pairs)")
    p.add_argument("--policy", help="policy YAML (default: built-in defaults)")
    p.add_argument("--since", type=_time_arg, help="window start (unix s or ISO-8601)")
    p.add_argument("--until", type=_time_arg, help="window end (unix s or ISO-8601)")
    p.add_argument("--split", type=_fraction, help="configured live split, for the SRM check")
    p.add_argument(
        "--shares",
        type=_shares,
        metavar="NAME=F,...",
        help="each challenger's split share (A/B/n), for the SRM checks across all arms",
    )
    p.add_argument(
        "--kind",
        choices=["score", "class", "vector", "value", "text"],
        help="prediction kind (default: the policy's, else score)",
    )
    p.add_argument("--reference-since", type=_time_arg, help="reference window for input drift")
    p.add_argument("--reference-until", type=_time_arg)
    p.add_argument("--reference-stats", help="reference statistics JSON for input drift")
    p.add_argument(
        "--write-reference-stats",
        metavar="FILE",
        help="also write this window's field statistics as a reference file",
    )
    p.add_argument("--format", choices=["json", "md", "html"], default="md")
    p.add_argument(
        "--compare",
        metavar="PREVIOUS.json",
        help="show what changed since a previous look: a report (--format json) or the "
        "promotion controller's state (router canary status --json)",
    )
    p.add_argument("-o", "--output", help="write here instead of stdout")
    p.add_argument(
        "--workers",
        type=int,
        default=2,
        help="pages of records parsed at once, beside the thread that folds them (default 2)",
    )
    p.add_argument(
        "--executor",
        type=_executor,
        help="with --archive: threads (one process: the default), processes (a local pool of "
        "--workers processes) or dask://HOST:PORT (a Dask distributed scheduler)",
    )
    p.add_argument("--rollups", action="store_true",
                   help="with --archive: merge the hours' rollups (`router rollup`) where they "
                   "match this policy and the outcomes, re-fold the other hours")  # fmt: skip
    p.add_argument("--seed", type=int, default=1, help="seed of --synthetic")
    p.add_argument("--progress", action="store_true", help="progress bar on stderr")
    p.add_argument(
        "--strict",
        action="store_true",
        help="policy warnings (a metric the policy names that the data lacks) are errors",
    )
    _one_line_errors(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import gc
    import importlib
    import os
    import threading

    import orjson

    # a short-lived command: the collector's passes over a thousand freshly imported modules
    # cost more than the few reference cycles they would free (the fold disables it anyway)
    gc.disable()
    if args.archive and "polars" not in sys.modules:
        # polars' allocator (jemalloc, configured once, when polars loads) keeps freed pages
        # for 0.5-1 s as polars sets it up (its settings come first in this variable, so
        # these win); a re-fold frees tens of MB a page, so it held 100-250 MB more than it
        # used. Returned within 200 ms by jemalloc's background thread here (measured at 50M
        # archived records: peak 1,568 -> 1,471 MiB, the same CPU; with no delay, 1,410 MiB
        # but 39% more CPU). Not for JSON lines: 2% of their CPU for 30 MB. A value the user
        # set is kept.
        os.environ.setdefault(
            "_RJEM_MALLOC_CONF", "background_thread:true,dirty_decay_ms:200,muzzy_decay_ms:0"
        )

    if args.executor and not args.archive:
        print("router: --executor needs --archive", file=sys.stderr)
        return 2
    if args.executor and args.executor != "threads" and args.archive and args.redis:
        print("router: --executor: an archive read with --redis is folded in one process "
              "(--executor threads)", file=sys.stderr)  # fmt: skip
        return 2
    # (threads by default: on 2 cores it re-folded 50M archived records faster than a pool
    # of 2 processes, 1.0M records/s against 0.7M, in half the memory, and exactly: see README)
    args.executor = args.executor or "threads"
    if args.rollups and (not args.archive or args.redis):
        print("router: --rollups needs --archive (without --redis)", file=sys.stderr)
        return 2
    if args.outcomes and not args.pairs:
        print("router: --outcomes needs --pairs", file=sys.stderr)
        return 2
    if args.workers < 1:
        print("router: --workers must be at least 1", file=sys.stderr)
        return 2
    why = window_problem(args, time.time())
    if why is not None:
        print(f"router: {why}", file=sys.stderr)
        return 2
    previous = None
    if args.compare:
        previous = _previous_look(args.compare)
        if previous is None:
            return 2
    reference = None
    if args.reference_stats:
        try:
            reference = orjson.loads(open(args.reference_stats, "rb").read())  # noqa: SIM115
        except (OSError, orjson.JSONDecodeError) as exc:
            print(f"router: cannot read --reference-stats: {exc}", file=sys.stderr)
            return 2
    track = (
        reference is not None
        or bool(args.write_reference_stats)
        or (args.reference_since is not None or args.reference_until is not None)
    )
    policy = None
    if args.synthetic:  # check the policy before generating the data
        policy = _policy(args.policy)
        if policy is None:
            return 2
    url = args.redis or os.environ.get("REDIS_URL")
    if args.archive:
        url = args.redis  # (with --redis: the archive, then the streams)
        if args.pairs or args.synthetic:
            print("router: --archive goes with --redis only, not --pairs or --synthetic",
                  file=sys.stderr)  # fmt: skip
            return 2
    if not (args.synthetic or args.pairs or url or args.archive):
        print(
            "router: no data source: pass --redis URL (or set REDIS_URL), --pairs FILE, "
            "--archive URI or --synthetic N",
            file=sys.stderr,
        )
        return 2
    if url and not (args.synthetic or args.pairs):
        why = redis_url_problem(url)
        if why is not None:
            flag = "--redis" if args.redis else "REDIS_URL"
            print(f"router: {flag}: malformed Redis URL {url!r}: {why}", file=sys.stderr)
            return 2

    from router.analysis.reader import NUMERIC_KINDS, Source, read_pages

    tmp = None
    if args.synthetic:
        tmp = _synthetic_files(args.experiment, args.synthetic, args.seed)
        src = Source(args.experiment, pairs_file=tmp[0], outcomes_file=tmp[1],
                     since=args.since, until=args.until)  # fmt: skip
    elif args.pairs:
        src = Source(args.experiment, pairs_file=args.pairs, outcomes_file=args.outcomes,
                     since=args.since, until=args.until)  # fmt: skip
    elif args.archive:
        src = Source(args.experiment, archive=args.archive, redis_url=url, since=args.since,
                     until=args.until, rollups=args.rollups)  # fmt: skip
    else:
        src = Source(args.experiment, redis_url=url, since=args.since, until=args.until)
    # start reading the records now: the policy, the analysis code and scipy import while the
    # first pages parse (the schema assumes numeric predictions unless told otherwise, and is
    # switched should the policy name another kind)
    guess = args.kind or (policy.prediction_kind if policy else None) or "score"
    try:
        pages: Pages | None = None
        if args.executor == "threads" and not args.rollups:  # (rollups: no raw read yet)
            pages = read_pages(src, guess, track, args.workers)
        elif src.archive:  # (fail early on an unreachable archive)
            from router.analysis.archive_read import open_store

            open_store(src)
    except OSError as exc:  # (an archive is listed here: a missing bucket, no such directory)
        print(f"router: cannot read data: {exc}", file=sys.stderr)
        return 3
    try:
        if policy is None:
            policy = _policy(args.policy)
            if policy is None:
                return 2
        kind = args.kind or policy.prediction_kind or "score"
        if pages is not None and ((kind in NUMERIC_KINDS) != (guess in NUMERIC_KINDS)
                                  or (kind == "text") != (guess == "text")):
            pages.close()
            pages = read_pages(src, kind, track, args.workers)

        # scipy (for the report) takes most of a second to import: do it while the data loads
        threading.Thread(
            target=importlib.import_module, args=("router.analysis.report",), daemon=True
        ).start()
        return _analyse(args, src, policy, kind, track, reference, pages, previous)
    finally:
        if pages is not None:
            pages.close()
        if tmp:
            for path in tmp:
                os.unlink(path)


def _previous_look(path: str) -> dict[str, Any] | None:
    """The previous look of ``--compare``, or None after saying why it cannot be used."""
    import orjson

    from router.analysis.compare import CompareError, previous_look

    try:
        with open(path, "rb") as fh:
            doc = orjson.loads(fh.read())
        previous_look(doc)
    except OSError as exc:
        print(f"router: --compare: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
        return None
    except orjson.JSONDecodeError as exc:
        print(f"router: --compare: {path}: not JSON ({exc})", file=sys.stderr)
        return None
    except CompareError as exc:
        print(f"router: --compare: {path}: {exc}", file=sys.stderr)
        return None
    return doc


def _policy(path: str | None) -> Policy | None:
    """The policy, or None after saying why it is invalid."""
    from router.analysis.policy import load_policy
    from router.config import ConfigError

    try:
        return load_policy(path)
    except ConfigError as exc:
        print(f"router: invalid policy: {exc}", file=sys.stderr)
        return None


def _analyse(
    args: argparse.Namespace,
    src: Source,
    policy: Policy,
    kind: str,
    track: bool,
    reference: dict[str, Any] | None,
    pages: Pages | None,
    previous: dict[str, Any] | None = None,
) -> int:
    """Fold the records being read, write the report; 3 when the data cannot be read."""
    import gc

    import orjson

    from router.analysis.distribute import ExecutorUnavailable
    from router.analysis.outcomes_index import TooManyMetrics
    from router.analysis.reader import InputError, Source
    from router.analysis.run import (
        accumulate,
        accumulate_arms,
        add_archive_section,
        earliest_available,
        quiet_blas,
    )

    progress, close = _progress(args.progress)
    try:
        arms = accumulate_arms(src, policy, kind=kind, workers=args.workers, track_fields=track,
                               progress=progress, pages=pages, executor=args.executor,
                               arms=list(args.shares) if args.shares else None)  # fmt: skip
        absent = _absent_experiment(args.experiment, src, arms.primary)
        if absent is not None:
            print(f"router: {absent}", file=sys.stderr)
            return 2
        # everything alive now (a thousand modules, the aggregates) lives until the process
        # ends: out of the collector's sight, the report's collections and the interpreter's
        # at exit stop walking it (measured: about 0.3 s of a 4 s run)
        gc.freeze()
        from router.analysis.report import report_from
        from router.analysis.sections.drift import reference_stats

        if args.reference_since is not None or args.reference_until is not None:
            from router.analysis.outcomes_index import OutcomeIndex

            ref_src = Source(
                args.experiment,
                pairs_file=src.pairs_file,
                redis_url=src.redis_url,
                archive=src.archive,
                since=args.reference_since,
                until=args.reference_until,
            )
            reference = reference_stats(
                accumulate(
                    ref_src, policy, kind=kind, workers=args.workers, outcomes=OutcomeIndex()
                )
            )
        with quiet_blas():
            report = report_from(
                arms,
                experiment=args.experiment,
                split=args.split,
                shares=args.shares,
                earliest_available=earliest_available(src),
                reference=reference,
            )
        add_archive_section(report, src, arms.primary)
    except InputError as exc:
        print(f"router: {exc}", file=sys.stderr)
        return 2
    except TooManyMetrics as exc:
        where = src.outcomes_file or f"{args.experiment}:outcomes"
        print(f"router: {where}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"router: cannot read data: {exc}", file=sys.stderr)
        return 3
    except ExecutorUnavailable as exc:
        print(f"router: --executor {args.executor}: {exc}", file=sys.stderr)
        return 3
    except Exception as exc:
        from redis.exceptions import RedisError

        if isinstance(exc, RedisError):
            print(f"router: Redis unreachable: {exc}", file=sys.stderr)
            return 3
        raise
    finally:
        close()
    warnings = report["data_quality"]["warnings"]
    if args.strict and warnings:
        print(f"router: --strict: policy warning: {'; '.join(warnings)}", file=sys.stderr)
        return 2
    if previous is not None:
        from router.analysis.compare import compare

        report["comparison"] = compare(report, previous)
    if args.write_reference_stats:
        with open(args.write_reference_stats, "wb") as fh:
            fh.write(orjson.dumps(reference_stats(arms.primary), option=orjson.OPT_INDENT_2))
    if args.format == "json":
        out = orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
    elif args.format == "md":
        from router.analysis.render import to_markdown

        out = to_markdown(report).encode()
    else:
        from router.analysis.render_html import to_html

        out = to_html(report, arms.primary).encode()
    if args.output:
        with open(args.output, "wb") as fh:
            fh.write(out)
        print(f"{report['decision']['action']}: report written to {args.output}", file=sys.stderr)
    else:
        sys.stdout.buffer.write(out + b"\n")
    return 0


def _absent_experiment(experiment: str, src: Source, acc: Any) -> str | None:
    """When the source has no record at all of ``experiment`` but has others' (a typo, or
    files of another experiment): a sentence naming the experiments present."""
    if acc.records or acc.outside_window or acc.invalid or acc.duplicates or acc.conflicts:
        return None
    if src.redis_url:
        from router.analysis.reader import experiments_in_redis

        present = {k: v for k, v in experiments_in_redis(src.redis_url).items() if k != experiment}
        where = "this Redis"
    else:
        present = dict(acc.other_experiments)
        where = src.pairs_file or "the records"
    if not present:
        return None
    names = ", ".join(f"{k} ({n} records)" for k, n in sorted(present.items()))
    return f"no records of experiment {experiment!r} in {where}; experiments present: {names}"


def _progress(enabled: bool) -> tuple[Callable[[int], object] | None, Callable[[], object]]:
    if not enabled or not sys.stderr.isatty():
        return None, lambda: None
    from tqdm import tqdm

    bar = tqdm(unit=" records", unit_scale=True, file=sys.stderr)
    return bar.update, bar.close


def _synthetic_files(experiment: str, n: int, seed: int) -> tuple[str, str]:
    import tempfile

    import orjson

    from router.demo.synth import SynthSpec, generate

    fd1, pairs = tempfile.mkstemp(suffix=".pairs.jsonl")
    fd2, outs = tempfile.mkstemp(suffix=".outcomes.jsonl")
    with open(fd1, "wb") as fp, open(fd2, "wb") as fo:
        for rec, rows in generate(
            SynthSpec(
                experiment=experiment,
                n=n,
                seed=seed,
                units=max(n // 20, 10),
                conversion_uplift=0.01,
            )
        ):
            fp.write(orjson.dumps(rec) + b"\n")
            for o in rows:
                fo.write(orjson.dumps(o) + b"\n")
    return pairs, outs
