"""``router export --experiment NAME [--redis URL] [--since T --until T] [--outcomes] -o FILE``.

Writes an experiment's captured records (or, with ``--outcomes``, its outcome rows) as JSON lines
(one DESIGN.md record per line, exactly as stored) or as CSV with flattened columns
(``champion.latency_ms``, ``segment.country``; lists as JSON) when FILE ends with ``.csv`` or
``--format csv``. ``--since``/``--until`` take unix seconds or ISO-8601 and select by the time the
entry was stored. A progress bar is shown when stderr is a terminal.
"""

from __future__ import annotations

import argparse
import os
import sys

RECORD_COLUMNS = [
    "v", "experiment", "request_id", "ts", "unit", "bucket", "served", "mirrored",
    *[f"{side}.{f}" for side in ("champion", "challenger")
      for f in ("version", "status", "latency_ms", "prediction", "error")],
    "contract.missing", "contract.extra", "contract.retyped",
]  # fmt: skip
OUTCOME_COLUMNS = ["v", "experiment", "request_id", "unit", "metric", "value", "ts"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "export",
        help="write an experiment's captured records or outcomes to JSONL or CSV",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--experiment", required=True, help="experiment name")
    p.add_argument("--redis", help="redis://, rediss://, unix:// or redis+cluster:// URL "
                   "(default: $REDIS_URL, else capture.redis of --config)")  # fmt: skip
    p.add_argument("-c", "--config", help="router config to take the Redis URL from")
    p.add_argument("--since", help="unix seconds or ISO-8601 (inclusive)")
    p.add_argument("--until", help="unix seconds or ISO-8601 (inclusive)")
    p.add_argument("--outcomes", action="store_true", help="export outcomes instead of records")
    p.add_argument("--format", choices=["jsonl", "csv"], help="default: from the file name")
    p.add_argument("-o", "--output", required=True, help="output file ('-' for stdout)")
    p.set_defaults(func=run)


def _redis_url(args: argparse.Namespace) -> str:
    if args.redis:
        return str(args.redis)
    if os.environ.get("REDIS_URL"):
        return os.environ["REDIS_URL"]
    if args.config:
        from pathlib import Path

        from router.config import load_config

        cap = load_config(args.config).capture
        if cap.redis != "embedded":
            return cap.redis
        url_file = Path(cap.data_dir) / "redis" / "url"
        if url_file.exists():
            return url_file.read_text().strip()
        raise ValueError(f"the embedded Redis of {args.config} is not running ({url_file} "
                         "missing); start the router or pass --redis")  # fmt: skip
    raise ValueError("no Redis given: pass --redis URL, set REDIS_URL, or pass -c CONFIG")


def run(args: argparse.Namespace) -> int:
    from router.capture.reader import parse_time

    try:
        url = _redis_url(args)
        since, until = parse_time(args.since), parse_time(args.until)
    except Exception as exc:  # config errors, bad times
        print(f"router export: {exc}", file=sys.stderr)
        return 2
    from router.commands.analyze import redis_url_problem

    why = redis_url_problem(url)
    if why is not None:
        print(f"router export: malformed Redis URL {url!r}: {why}", file=sys.stderr)
        return 2
    fmt = args.format or ("csv" if args.output.lower().endswith(".csv") else "jsonl")
    from redis.exceptions import RedisError

    try:
        n, keys = export(url, args.experiment, args.output, fmt=fmt, outcomes=args.outcomes,
                         since=since, until=until)  # fmt: skip
    except (RedisError, OSError) as exc:
        print(f"router export: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    what = "outcome rows" if args.outcomes else "records"
    print(f"router export: {n} {what} of {args.experiment!r} from {', '.join(keys)} "
          f"-> {args.output} ({fmt})", file=sys.stderr)  # fmt: skip
    return 0


def flatten(doc: dict[str, object], prefix: str = "", out: dict[str, str] | None = None
            ) -> dict[str, str]:  # fmt: skip
    """``{"champion": {"latency_ms": 3.5}}`` → ``{"champion.latency_ms": "3.5"}``; lists as JSON,
    ``None`` as an empty cell, booleans as ``true``/``false``."""
    import orjson

    out = {} if out is None else out
    for k, v in doc.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            flatten(v, name + ".", out)
        elif v is None:
            out[name] = ""
        elif isinstance(v, bool):
            out[name] = "true" if v else "false"
        elif isinstance(v, (list, tuple)):
            out[name] = orjson.dumps(v).decode()
        else:
            out[name] = str(v)
    return out


def export(
    url: str, experiment: str, output: str, *, fmt: str = "jsonl", outcomes: bool = False,
    since: float | None = None, until: float | None = None,
) -> tuple[int, list[str]]:  # fmt: skip
    """Write the window to ``output``; returns (rows written, stream keys read)."""
    import csv
    import tempfile

    import orjson
    from tqdm import tqdm

    from router.capture.clients import make_sync_client
    from router.capture.reader import earliest_available, iter_merged, stream_keys

    client = make_sync_client(url)
    try:
        keys = stream_keys(client, experiment, outcomes)
        first = earliest_available(client, keys)
        if since is not None and first is not None and since < first:
            print(f"router export: note: the streams start at {first:.3f}; entries before it "
                  "were trimmed by retention", file=sys.stderr)  # fmt: skip
        total = sum(int(client.xlen(k)) for k in keys)
        bar = tqdm(total=total, unit="rec", disable=not sys.stderr.isatty(), file=sys.stderr,
                   desc=f"export {experiment}")  # fmt: skip
        entries = iter_merged(client, keys, since, until)
        to_stdout = output == "-"
        n = 0
        if fmt == "jsonl":
            fh = sys.stdout.buffer if to_stdout else open(output, "wb")  # noqa: SIM115
            try:
                for e in entries:
                    fh.write(orjson.dumps(e.doc) + b"\n")
                    n += 1
                    bar.update()
            finally:
                if not to_stdout:
                    fh.close()
        else:
            # two passes: rows to a temporary JSONL while collecting the columns, then the CSV
            base = OUTCOME_COLUMNS if outcomes else RECORD_COLUMNS
            extra: set[str] = set()
            with tempfile.TemporaryFile() as tmp:
                for e in entries:
                    flat = flatten(e.doc)
                    extra.update(k for k in flat if k not in base)
                    tmp.write(orjson.dumps(flat) + b"\n")
                    n += 1
                    bar.update()
                tmp.seek(0)
                columns = base + sorted(extra)
                out = sys.stdout if to_stdout else open(output, "w", newline="")  # noqa: SIM115
                try:
                    w = csv.DictWriter(out, fieldnames=columns, restval="")
                    w.writeheader()
                    for line in tmp:
                        w.writerow(orjson.loads(line))
                finally:
                    if not to_stdout:
                        out.close()
        bar.close()
        return n, keys
    finally:
        client.close()
