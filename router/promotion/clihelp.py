"""Shared pieces of the promotion CLI commands (imported inside ``run``, never at registration)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from router.promotion.config import PromotionConfig, PromotionConfigError, load_promotion_config


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


def redis_url(args: argparse.Namespace) -> str:
    url: str | None = getattr(args, "redis", None) or os.environ.get("REDIS_URL")
    if not url:
        raise CliError("no Redis: pass --redis URL or set REDIS_URL")
    return url


def promotion_config(args: argparse.Namespace) -> PromotionConfig:
    try:
        return load_promotion_config(getattr(args, "promotion", None))
    except PromotionConfigError as exc:
        raise CliError(f"invalid promotion config: {exc}") from None


def load_answers(path: str) -> Any:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise CliError(f"{p}: cannot read answers: {exc}") from None
    try:
        return yaml.safe_load(text)  # YAML is a superset of JSON
    except yaml.YAMLError as exc:
        raise CliError(f"{p}: not YAML/JSON: {exc}") from None


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


def fail(msg: str, code: int = 2) -> int:
    print(f"router: {msg}", file=sys.stderr)
    return code
