"""Where archived data lives: hive-style partitions and file names (pure; no I/O).

::

    <root>/pairs/experiment=<name>/date=YYYY-MM-DD/hour=HH/part-<shard>-<first>_<last>.parquet
    <root>/outcomes/experiment=<name>/date=YYYY-MM-DD/hour=HH/part-x-<first>_<last>.parquet

The hour is the UTC hour of the entry's stream id (when Redis stored it), so an entry's
partition never changes and a file's name follows from the entries it holds: ``<shard>`` is the
pairs stream's shard (``x`` when unsharded), the ids are the first and last stream ids
(``<ms>-<seq>``) of the file. A rewrite of the same entries after a crash produces the same
name (idempotent); entries already in an overlapping file are left out before writing
(:mod:`router.archive.writer`).
Temporary files start with a dot, which DuckDB, Spark, Trino and polars skip when globbing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

KINDS = ("pairs", "outcomes")
ROLLUPS = "rollups"  # hourly aggregates beside the partitions (router.analysis.rollups)
_PART = re.compile(r"^part-(x|\d+)-(\d+)-(\d+)_(\d+)-(\d+)\.parquet$")
_HOUR_DIR = re.compile(r"^date=(\d{4}-\d{2}-\d{2})/hour=(\d{2})$")


def parse_id(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass(frozen=True, slots=True, order=True)
class Hour:
    """One UTC hour: the partition unit (``start`` in unix seconds, a multiple of 3600)."""

    start: int

    @classmethod
    def of_ms(cls, ms: int) -> Hour:
        return cls((ms // 3_600_000) * 3600)

    @classmethod
    def of_ts(cls, ts: float) -> Hour:
        return cls(int(ts // 3600) * 3600)

    @property
    def end(self) -> int:
        return self.start + 3600

    @property
    def path(self) -> str:
        dt = datetime.fromtimestamp(self.start, UTC)
        return f"date={dt:%Y-%m-%d}/hour={dt:%H}"

    @classmethod
    def parse(cls, path: str) -> Hour | None:
        """The hour of a ``date=…/hour=…`` path, None when it is not one."""
        m = _HOUR_DIR.match(path)
        if m is None:
            return None
        try:
            dt = datetime.strptime(f"{m[1]} {m[2]}", "%Y-%m-%d %H").replace(tzinfo=UTC)
        except ValueError:
            return None
        return cls(int(dt.timestamp()))


def experiment_dir(kind: str, experiment: str) -> str:
    return f"{kind}/experiment={experiment}"


def partition_dir(kind: str, experiment: str, hour: Hour) -> str:
    return f"{experiment_dir(kind, experiment)}/{hour.path}"


@dataclass(frozen=True, slots=True)
class PartName:
    shard: str  # the shard number, or x for an unsharded stream (and the outcomes)
    first: tuple[int, int]
    last: tuple[int, int]

    @property
    def name(self) -> str:
        return (f"part-{self.shard}-{self.first[0]}-{self.first[1]}_"
                f"{self.last[0]}-{self.last[1]}.parquet")  # fmt: skip

    def overlaps(self, first: tuple[int, int], last: tuple[int, int]) -> bool:
        return not (last < self.first or first > self.last)

    @classmethod
    def parse(cls, name: str) -> PartName | None:
        m = _PART.match(name)
        if m is None:
            return None
        return cls(m[1], (int(m[2]), int(m[3])), (int(m[4]), int(m[5])))


def shard_of(stream_key: str) -> str:
    """The shard number of a pairs stream key (``<exp>:pairs:<i>``, ``{<exp>:<i>}:pairs``);
    ``x`` for an unsharded stream or the outcomes."""
    if stream_key.startswith("{"):
        tag, _, rest = stream_key[1:].partition("}")
        head, _, tail = tag.rpartition(":")
        return tail if rest == ":pairs" and head and tail.isdigit() else "x"
    head, _, tail = stream_key.rpartition(":")
    return tail if head.endswith(":pairs") and tail.isdigit() else "x"
