"""``router audit verify|show --experiment NAME``: check or print the hash-chained audit trail.

``verify`` recomputes every record's SHA-256 and the links between records, checks the chain head
(so deleting the newest records is caught too) and, when the JSONL mirror exists (``--file`` or
``<audit.dir>/<experiment>.audit.jsonl``), verifies it and compares it with Redis. Exit status 0
when intact, 1 when any record was edited, inserted or deleted (each problem is printed)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("audit", help="verify or show the tamper-evident audit trail")
    asub = p.add_subparsers(dest="audit_command", metavar="ACTION")
    asub.required = True
    for name, text in (("verify", "detect edited/inserted/deleted records"), ("show", "history")):
        a = asub.add_parser(name, help=text)
        a.add_argument("--experiment", required=True)
        a.add_argument("--redis", help="Redis URL (default: $REDIS_URL)")
        a.add_argument("--promotion", help="promotion config YAML (for audit.dir)")
        a.add_argument(
            "--file", help="JSONL mirror (default: <audit.dir>/<experiment>.audit.jsonl)"
        )
        if name == "verify":
            a.add_argument(
                "--no-redis", action="store_true", help="verify only the JSONL mirror (offline)"
            )
        else:
            a.add_argument("--json", action="store_true", help="print raw records as JSON lines")
        a.set_defaults(func=run, action=name)


def run(args: argparse.Namespace) -> int:
    import asyncio
    from pathlib import Path

    from router.promotion.clihelp import CliError, fail, promotion_config, redis_url

    try:
        cfg = promotion_config(args)
        mirror = args.file or str(Path(cfg.audit.dir) / f"{args.experiment}.audit.jsonl")
        url = None if getattr(args, "no_redis", False) else redis_url(args)
    except CliError as exc:
        return fail(str(exc))
    if args.action == "verify":
        return asyncio.run(_verify(url, args.experiment, mirror))
    assert url is not None
    return asyncio.run(_show(url, args.experiment, bool(args.json)))


async def _verify(url: str | None, experiment: str, mirror: str) -> int:
    from router.promotion import actions

    res = await actions.verify(url, experiment, mirror)
    where = ("redis" if url else "") + (" + mirror " + mirror if res.mirror_checked else "")
    if not res.problems:
        print(f"{experiment}: audit intact: {res.records} records ({where.strip()})")
        return 0
    print(f"{experiment}: AUDIT TAMPERED: {len(res.problems)} problem(s) in {res.records} records")
    for p in res.problems:
        print(f"  {p}")
    return 1


async def _show(url: str, experiment: str, as_json: bool) -> int:
    from router.capture.clients import make_client
    from router.promotion.audit import canonical_json, describe
    from router.promotion.store import PromotionStore

    r = make_client(url, timeout=5.0)
    try:
        records = await PromotionStore(r, experiment).records()
    finally:
        await r.aclose()
    if not records:
        print(f"{experiment}: no audit records")
        return 1
    for rec in records:
        if rec is None:
            print("   ?  <unreadable record>")
        elif as_json:
            print(canonical_json(rec).decode())
        else:
            print(describe(rec))
    return 0
