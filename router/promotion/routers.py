"""Drive router replicas through their admin API, idempotently.

``reconcile(target)`` reads each router's ``GET <prefix>/state`` and POSTs to
``<prefix>/experiment`` only the keys that differ from the target (compare before set), then
checks the answer; failures are retried with backoff. Applying the same target twice changes
nothing, which is what lets a restarted controller re-apply its state safely.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import aiohttp

from router.promotion.state import Pin, Target

log = logging.getLogger("router.promotion.routers")


class RouterError(Exception):
    pass


class RouterRejected(RouterError):
    """A 4xx answer (bad token, invalid change): retrying the same request cannot help."""


def diff(target: Target, live: dict[str, Any]) -> dict[str, Any]:
    """The admin change that moves ``live`` (the ``state`` of ``GET /state``) to ``target``."""
    change: dict[str, Any] = {}
    multi = bool(target.challengers)  # then the shares go through <prefix>/challengers
    for key in ("split", "mirror"):
        if not multi and abs(float(live.get(key, -1.0)) - getattr(target, key)) > 1e-9:
            change[key] = getattr(target, key)
    for key in ("champion",) if multi else ("champion", "challenger"):
        pin: Pin = getattr(target, key)
        cur = live.get(key) or {}
        if str(cur.get("url", "")).rstrip("/") != pin.url.rstrip("/") or cur.get("version") != str(
            pin.version
        ):
            change[key] = pin.to_json()
    return change


def challenger_ops(target: Target, live: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``<prefix>/challengers`` updates that move each challenger's shares in ``live`` to
    ``target``'s; the ones that lower a split first, so the shares never sum over 1 on the way.
    A challenger of the target the router does not run is an error (it must be configured)."""
    have = {c["name"]: c for c in live.get("challengers") or []}
    down: list[dict[str, Any]] = []
    up: list[dict[str, Any]] = []
    for share in target.challengers:
        cur = have.get(share.name)
        if cur is None:
            raise RouterRejected(f"the router runs no challenger named {share.name!r}")
        ds = share.split - float(cur["split"])
        if abs(ds) > 1e-9 or abs(share.mirror - float(cur["mirror"])) > 1e-9:
            op = {"op": "update", "name": share.name, "split": share.split,
                  "mirror": share.mirror}  # fmt: skip
            (down if ds < 0 else up).append(op)
    return down + up


@dataclass(frozen=True, slots=True)
class Applied:
    url: str
    result: str  # unchanged | applied | error
    change: dict[str, Any]
    error: str | None = None


class RouterFleet:
    def __init__(
        self,
        urls: list[str] | tuple[str, ...],
        token: str,
        *,
        prefix: str = "/_router",
        timeout_s: float = 2.0,
        retries: int = 3,
    ) -> None:
        self.urls = [u.rstrip("/") for u in urls]
        self.prefix = prefix
        self.headers = {"Authorization": f"Bearer {token}"}
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.retries = retries
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> RouterFleet:
        self._session = aiohttp.ClientSession(timeout=self.timeout, headers=self.headers)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("RouterFleet used outside 'async with'")
        return self._session

    async def get_state(self, url: str) -> dict[str, Any]:
        async with self.session.get(f"{url}{self.prefix}/state") as r:
            body = await r.json(content_type=None)
            if r.status != 200:
                cls = RouterRejected if 400 <= r.status < 500 else RouterError
                raise cls(f"{url}: GET state: HTTP {r.status}: {body}")
            return dict(body["state"])

    async def states(self) -> dict[str, dict[str, Any]]:
        got = await asyncio.gather(*(self.get_state(u) for u in self.urls))
        return dict(zip(self.urls, got, strict=True))

    async def current_pins(self) -> tuple[Pin, Pin]:
        """The champion and challenger pins, which must agree across replicas."""
        states = await self.states()
        pins = {
            (Pin.from_json(s["champion"]), Pin.from_json(s["challenger"])) for s in states.values()
        }
        if len(pins) != 1:
            raise RouterError(
                f"routers disagree on champion/challenger pins: {sorted(map(str, pins))}"
            )
        return pins.pop()

    async def current_challengers(self) -> list[tuple[str, Pin]]:
        """Every challenger the routers run (name, pin), which must agree across replicas."""
        states = await self.states()
        seen = {
            tuple((c["name"], c["url"], c["version"]) for c in s.get("challengers") or [])
            for s in states.values()
        }
        if len(seen) != 1:
            raise RouterError(f"routers disagree on their challengers: {sorted(seen)}")
        return [(n, Pin(u, v)) for n, u, v in seen.pop()]

    async def _post(self, url: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        async with self.session.post(f"{url}{self.prefix}{path}", json=body) as r:
            got = await r.json(content_type=None)
            if r.status != 200:
                cls = RouterRejected if 400 <= r.status < 500 else RouterError
                raise cls(f"POST {path}: HTTP {r.status}: {got}")
            return dict(got)

    async def _apply_one(self, url: str, target: Target, note: str) -> Applied:
        last_err = ""
        change: dict[str, Any] = {}
        for attempt in range(self.retries):
            try:
                live = await self.get_state(url)
                ops = challenger_ops(target, live) if target.challengers else []
                for op in ops:
                    await self._post(url, "/challengers", dict(op, note=note))
                if ops:
                    live = await self.get_state(url)
                    if challenger_ops(target, live):
                        raise RouterError("router challengers after POST still differ")
                change = diff(target, live)
                if not change:
                    if ops:
                        return Applied(url, "applied", {"challengers": ops})
                    return Applied(url, "unchanged" if attempt == 0 else "applied", {})
                async with self.session.post(
                    f"{url}{self.prefix}/experiment", json=dict(change, note=note)
                ) as r:
                    body = await r.json(content_type=None)
                    if r.status == 409 and isinstance(body, dict) and body.get("state"):
                        # a router sharing the live state saw it move (another replica, the
                        # controller's own commit): done if it is already at the target
                        if not diff(target, body["state"]):
                            return Applied(url, "applied", change)
                        raise RouterError(f"POST experiment: HTTP 409: {body.get('error')}")
                    if r.status != 200:
                        cls = RouterRejected if 400 <= r.status < 500 else RouterError
                        raise cls(f"POST experiment: HTTP {r.status}: {body}")
                    if diff(target, body["state"]):
                        raise RouterError("router state after POST still differs from target")
                return Applied(url, "applied", dict(change, challengers=ops) if ops else change)
            except (aiohttp.ClientError, TimeoutError, RouterError, KeyError, ValueError) as exc:
                last_err = f"{type(exc).__name__}: {exc}"
                log.warning("router %s: attempt %d failed: %s", url, attempt + 1, last_err)
                if isinstance(exc, RouterRejected):
                    break
                if attempt + 1 < self.retries:
                    await asyncio.sleep(0.1 * 2**attempt)
        return Applied(url, "error", change, last_err)

    async def reconcile(self, target: Target, note: str = "") -> list[Applied]:
        """Bring every router to ``target``; concurrent across replicas."""
        return list(await asyncio.gather(*(self._apply_one(u, target, note) for u in self.urls)))
