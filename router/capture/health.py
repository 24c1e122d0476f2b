"""How capture reports its state: one-line error texts and the ``/readyz`` decision (pure)."""

from __future__ import annotations

from typing import Any


def describe_error(exc: BaseException, timeout: float | None = None) -> str:
    """``Kind: message`` on one line (a timeout says how long it waited)."""
    text = " ".join(str(exc).split())
    if not text and isinstance(exc, TimeoutError) and timeout is not None:
        text = f"no answer within {timeout:g} s"
    return f"{type(exc).__name__}: {text}"[:300]


def readiness(st: dict[str, Any], *, healthy: bool, redis_ok: bool, running: bool,
              last_error: str | None) -> dict[str, Any]:  # fmt: skip
    """The capture check of ``/readyz`` from the writer's ``status()`` (``st``). Ready when
    Redis takes writes, or when the spool takes them (it has room) while the probe works on
    recovery: a Redis outage alone does not take a router out of rotation. Not ready when the
    spool is full or disabled while Redis is down, or when the writer or its probe has stopped."""
    recovering = healthy or bool(st["recovering"])
    spooling = bool(st["spool_enabled"]) and not st["spool_full"]
    ok = running and (redis_ok or (spooling and recovering))
    if not running:
        error: str | None = "the capture writer is not running"
    elif redis_ok:
        error = None
    elif not recovering:
        error = "Redis is down and nothing is probing it"
    elif not spooling:
        error = ("spool full: records are being dropped; " if st["spool_enabled"]
                 else "no spool: records are being dropped; ") + (
            last_error or "Redis write probe failed")  # fmt: skip
    else:
        error = last_error or "Redis write probe failed"
    return {
        "ok": ok,
        "redis": redis_ok,
        "spooling": not redis_ok and spooling,
        "recovering": not redis_ok and recovering,
        "queue": st["queue"],
        "spool_bytes": st["spool_bytes"],
        "error": error,
    }
