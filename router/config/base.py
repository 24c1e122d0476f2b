"""The building blocks of every config model: the error type, strict models, small parsers."""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict


class ConfigError(Exception):
    """Invalid configuration; ``str(err)`` is a single line naming file, key and problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, validate_assignment=True)


def _parse_hostport(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not (0 <= int(port) <= 65535):
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return (host.strip("[]") or "0.0.0.0"), int(port)


def _readable_file(v: str | None) -> str | None:
    if v is not None and not os.access(v, os.R_OK):
        raise ValueError(f"cannot read file {v!r}")
    return v
