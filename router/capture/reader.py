"""Read captured streams back: a time window over one or several streams, in order.

Entries are selected by stream id, i.e. by the time Redis stored them (``<ms>-<seq>``); each
record also carries its own ``ts`` (when the router saw the request). The two differ for records
replayed from the spool after an outage: they are stored late, with the id of their replay.

- :func:`iter_stream` pages one stream with ``XRANGE`` (``COUNT`` per round trip).
- :func:`iter_raw_pages` pages one stream's raw payloads, undecoded, for bulk decoders.
- :func:`iter_merged` merges several streams (the shards of a hot experiment's pairs) into one
  sequence ordered by stream id, lazily (``heapq.merge`` over the paged streams).
- :func:`earliest_available` is the oldest timestamp still in the streams, so a caller asking for
  a window that retention (``MAXLEN``/``MINID``) already trimmed can say so instead of silently
  analysing half a window.

Works with ``redis.Redis`` and ``redis.cluster.RedisCluster`` (blocking clients); stream keys come
from :mod:`router.capture.keys`.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, overload

import orjson

from router.capture.keys import outcomes_key, pair_keys, pairs_key

PAGE = 1000
MAX_SHARDS = 256


def parse_time(value: str | float | int | None) -> float | None:
    """Unix seconds (``1700000000``, ``1700000000.5``) or ISO-8601 (``2026-11-29T10:00:00Z``;
    a time without a zone is UTC). ``None`` and ``""`` stay ``None``."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)):
        return float(value)
    text = value.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as exc:
        raise ValueError(f"not unix seconds or ISO-8601: {value!r}") from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def _min_id(since: float | None) -> str:
    return "-" if since is None else f"{int(since * 1000)}-0"


def _max_id(until: float | None) -> str:
    return "+" if until is None else f"{int(until * 1000)}-{2**64 - 1}"


def _s(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


@dataclass(frozen=True, slots=True)
class Entry:
    id: str
    key: str
    doc: dict[str, Any]

    @property
    def order(self) -> tuple[int, int]:
        ms, _, seq = self.id.partition("-")
        return int(ms), int(seq or 0)

    @property
    def stored_at(self) -> float:
        return self.order[0] / 1000.0


def iter_stream(
    client: Any, key: str, since: float | None = None, until: float | None = None,
    count: int = PAGE, *, after: str | None = None,
) -> Iterator[Entry]:  # fmt: skip
    """Entries of ``key`` stored within ``[since, until]`` (unix s), decoded from field ``r``;
    with ``after`` (a stream id), only the entries after it (for incremental readers).
    Entries that are not JSON objects are skipped."""
    start, end = ("(" + after if after is not None else _min_id(since)), _max_id(until)
    while True:
        batch = client.xrange(key, min=start, max=end, count=count)
        for raw_id, fields in batch:
            raw = fields.get(b"r", fields.get("r"))
            if raw is None:
                continue
            try:
                doc = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            if isinstance(doc, dict):
                yield Entry(_s(raw_id), key, doc)
        if len(batch) < count:
            return
        start = "(" + _s(batch[-1][0])


def iter_merged(
    client: Any, keys: list[str], since: float | None = None, until: float | None = None,
    count: int = PAGE,
) -> Iterator[Entry]:  # fmt: skip
    """Entries of several streams in one sequence ordered by stream id (ties: key order)."""
    if len(keys) == 1:
        yield from iter_stream(client, keys[0], since, until, count)
        return

    def keyed(i: int, key: str) -> Iterator[tuple[tuple[int, int], int, Entry]]:
        for e in iter_stream(client, key, since, until, count):
            yield e.order, i, e

    for _order, _i, e in heapq.merge(*(keyed(i, k) for i, k in enumerate(keys))):
        yield e


def iter_raw_pages(
    client: Any, key: str, since: float | None = None, until: float | None = None,
    count: int = 10_000, *, until_exclusive: bool = False,
) -> Iterator[list[bytes]]:  # fmt: skip
    """Pages of the raw ``r`` payloads of ``key`` stored within ``[since, until]`` (``[since,
    until)`` with ``until_exclusive``), undecoded: for readers that decode in bulk (the
    analyzer). One page is in memory at a time."""
    for _ids, page in iter_raw_id_pages(client, key, since, until, count,
                                        until_exclusive=until_exclusive):  # fmt: skip
        yield page


class _PageIds(Sequence[Any]):
    """The stream ids of a page of ``XRANGE`` entries, read from the batch only when asked
    (the analyzer names an entry only when it is invalid)."""

    def __init__(self, batch: list[Any]) -> None:
        self._batch = batch

    def __len__(self) -> int:
        return len(self._batch)

    @overload
    def __getitem__(self, i: int) -> Any: ...
    @overload
    def __getitem__(self, i: slice) -> list[Any]: ...
    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            return [e[0] for e in self._batch[i]]
        return self._batch[i][0]


def iter_raw_id_pages(
    client: Any, key: str, since: float | None = None, until: float | None = None,
    count: int = 10_000, *, until_exclusive: bool = False,
) -> Iterator[tuple[Sequence[Any], list[bytes]]]:  # fmt: skip
    """:func:`iter_raw_pages` with the stream id of each payload (to name a bad entry), as
    the client returns it (bytes, or str with ``decode_responses``)."""
    start = _min_id(since)
    end = _max_id(until)
    if until_exclusive and until is not None:
        end = f"({int(until * 1000)}-0"  # strictly before this millisecond
    while True:
        batch = client.xrange(key, min=start, max=end, count=count)
        if not batch:
            return
        page = []
        for _id, fields in batch:
            raw = fields.get(b"r", fields.get("r"))
            if raw is not None:
                page.append(raw if isinstance(raw, bytes) else str(raw).encode())
        if len(page) == len(batch):
            ids: Sequence[Any] = _PageIds(batch)
        else:  # (entries without a payload are skipped: name the others one by one)
            ids = [e[0] for e in batch if e[1].get(b"r", e[1].get("r")) is not None]
        if page:
            yield ids, page
        if len(batch) < count:
            return
        start = "(" + _s(batch[-1][0])


def is_cluster_client(client: Any) -> bool:
    from redis.cluster import RedisCluster

    return isinstance(client, RedisCluster)


def discover_pair_keys(client: Any, experiment: str) -> list[str]:
    """The pairs stream(s) of an experiment: the single stream, or shards 0..N-1 that exist."""
    cluster = is_cluster_client(client)
    keys: list[str] = []
    if client.exists(pairs_key(experiment, cluster=cluster)):
        keys.append(pairs_key(experiment, cluster=cluster))
    for i in range(MAX_SHARDS):
        k = pairs_key(experiment, cluster=cluster, shard=i)
        if not client.exists(k):
            break
        keys.append(k)
    return keys or pair_keys(experiment, cluster=cluster)


def stream_keys(client: Any, experiment: str, outcomes: bool = False) -> list[str]:
    if outcomes:
        return [outcomes_key(experiment, cluster=is_cluster_client(client))]
    return discover_pair_keys(client, experiment)


def earliest_available(client: Any, keys: list[str]) -> float | None:
    """Oldest stream-id timestamp (unix s) over ``keys``; None when all are empty."""
    firsts: list[float] = []
    for k in keys:
        head = client.xrange(k, min="-", max="+", count=1)
        if head:
            firsts.append(Entry(_s(head[0][0]), k, {}).stored_at)
    return min(firsts) if firsts else None


def latest_available(client: Any, keys: list[str]) -> float | None:
    """Newest stream-id timestamp (unix s) over ``keys``; None when all are empty."""
    lasts: list[float] = []
    for k in keys:
        tail = client.xrevrange(k, max="+", min="-", count=1)
        if tail:
            lasts.append(Entry(_s(tail[0][0]), k, {}).stored_at)
    return max(lasts) if lasts else None


def read_window(
    client: Any, experiment: str, *, outcomes: bool = False, since: float | None = None,
    until: float | None = None,
) -> Iterator[dict[str, Any]]:  # fmt: skip
    """Records (or outcomes) of an experiment stored within the window, in stream order."""
    for e in iter_merged(client, stream_keys(client, experiment, outcomes), since, until):
        yield e.doc
