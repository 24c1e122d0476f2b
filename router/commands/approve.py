"""``router approve --experiment NAME --reviewer ID --answers FILE``: sign off the final step.

The answers file (YAML or JSON) must confirm every check::

    model_card_reviewed: true
    disaggregated_results_checked: true
    known_limitations_acknowledged: true
    on_call_in_place: true
    on_call_contact: "@ml-oncall"
    notes: "free text, kept in the audit"

An approval less than ``approval.rubber_stamp_s`` (60 s) after the request opened is accepted but
flagged in the audit as a possible rubber stamp. With ``reviewers_required: 2`` (or
``high_stakes: true``) the promotion happens on the second distinct reviewer's approval."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("approve", help="approve a canary awaiting approval (questionnaire)")
    p.add_argument("--experiment", required=True)
    p.add_argument("--reviewer", required=True, help="reviewer id (audited)")
    p.add_argument("--answers", required=True, help="questionnaire answers, YAML or JSON")
    p.add_argument("--redis", help="Redis URL (default: $REDIS_URL)")
    p.add_argument("--promotion", help="promotion config YAML")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import asyncio
    import time

    from router.promotion import actions
    from router.promotion.approval import QuestionnaireError, validate_answers
    from router.promotion.clihelp import (
        CliError,
        fail,
        load_answers,
        promotion_config,
        redis_url,
    )

    try:
        url = redis_url(args)
        cfg = promotion_config(args)
        answers = validate_answers(load_answers(args.answers))
    except CliError as exc:
        return fail(str(exc))
    except QuestionnaireError as exc:
        return fail(f"{args.answers}: questionnaire incomplete: {exc}")
    try:
        res = asyncio.run(
            actions.approve(
                url, args.experiment, cfg, reviewer=args.reviewer, answers=answers, now=time.time()
            )
        )
    except (actions.NoExperiment, actions.TransitionError) as exc:
        return fail(str(exc), 1)
    for rec in res.records:
        print(f"audit #{rec['seq']}: {rec['event']}: {'; '.join(rec['data'].get('reasons', []))}")
    for a in res.applied:
        print(f"{a.url}: {a.result}" + (f" ({a.error})" if a.error else ""))
    from router.commands.canary import delivery_line

    print(delivery_line(res.delivery))
    print(f"{args.experiment}: stage {res.state.stage}")
    return 1 if any(a.result == "error" for a in res.applied) else 0
