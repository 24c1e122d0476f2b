"""Stream entries into Parquet partition files, exactly once (the archiver's write step).

:meth:`PartitionWriter.write` splits a batch of one stream's entries by the UTC hour of their
stream id, leaves out entries some file of that partition already holds (a crash between a
file's rename and the stream acknowledgement makes the entries come back: own pending entries
on restart, or another archiver's ``XAUTOCLAIM``), and writes the rest as one file per hour named
by its id range (:mod:`router.archive.layout`). The caller acknowledges the entries only after
``write`` returned, so every entry ends up in exactly one file.

Which files might hold an entry is known from file names alone (each names its stream shard and
id range); only files whose range overlaps the batch are opened, and only their ``stream_id``
column is read. A partition's listing is cached after its first use; entries that were delivered
before (``recheck``) list it again, since another archiver may have written there meanwhile.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from router.archive.convert import entries_table
from router.archive.layout import Hour, PartName, parse_id, partition_dir, shard_of
from router.archive.store import ArchiveStore

log = logging.getLogger(__name__)
MAX_CACHED_DIRS = 512


@dataclass
class WriteResult:
    records: int = 0
    files: int = 0
    bytes: int = 0
    skipped: int = 0  # entries already in the archive (a rewrite after a crash)
    raw: int = 0  # entries kept whole in column raw
    paths: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class WriteOptions:
    compression: str = "zstd"
    compression_level: int | None = None
    row_group_size: int = 128 * 1024


class PartitionWriter:
    def __init__(self, store: ArchiveStore, experiment: str, options: WriteOptions) -> None:
        self.store, self.experiment, self.options = store, experiment, options
        self._parts: OrderedDict[str, list[PartName]] = OrderedDict()

    def _listing(self, rel_dir: str, refresh: bool) -> list[PartName]:
        parts = self._parts.get(rel_dir)
        if parts is None or refresh:
            entries = self.store.list_dir(rel_dir)
            self.store.remove_stale_tmp(rel_dir, entries)
            parts = [p for e in entries if not e.is_dir and (p := PartName.parse(e.name))]
            self._parts[rel_dir] = parts
            while len(self._parts) > MAX_CACHED_DIRS:
                self._parts.popitem(last=False)
        self._parts.move_to_end(rel_dir)
        return parts

    def _already_written(self, rel_dir: str, shard: str, ids: list[str],
                         refresh: bool) -> set[str]:  # fmt: skip
        first, last = min(parse_id(i) for i in ids), max(parse_id(i) for i in ids)
        found: set[str] = set()
        for part in self._listing(rel_dir, refresh):
            if part.shard == shard and part.overlaps(first, last):
                pf = self.store.parquet(f"{rel_dir}/{part.name}")
                found.update(pf.read(columns=["stream_id"]).column(0).to_pylist())
        return found

    def write(
        self, kind: str, stream: str, ids: Sequence[str], payloads: Sequence[bytes], *,
        recheck: bool = False,
    ) -> WriteResult:  # fmt: skip
        """Archive entries of ``stream`` (``kind``: pairs or outcomes). ``recheck``: the entries
        may have been delivered before (pending, claimed): list their partitions afresh."""
        result = WriteResult()
        shard = shard_of(stream) if kind == "pairs" else "x"
        by_hour: dict[Hour, list[int]] = {}
        for i, sid in enumerate(ids):
            by_hour.setdefault(Hour.of_ms(parse_id(sid)[0]), []).append(i)
        for hour, rows in sorted(by_hour.items()):
            rel_dir = partition_dir(kind, self.experiment, hour)
            hids = [ids[i] for i in rows]
            have = self._already_written(rel_dir, shard, hids, recheck)
            if have:
                keep = [i for i in rows if ids[i] not in have]
                result.skipped += len(rows) - len(keep)
                rows = keep
                if not rows:
                    continue
                hids = [ids[i] for i in rows]
            order = sorted(range(len(rows)), key=lambda k: parse_id(hids[k]))
            rows = [rows[k] for k in order]
            hids = [hids[k] for k in order]
            table = entries_table(kind, stream, hids, [payloads[i] for i in rows])
            name = PartName(shard, parse_id(hids[0]), parse_id(hids[-1]))
            size = self.store.write_table(
                rel_dir, name.name, table, compression=self.options.compression,
                compression_level=self.options.compression_level,
                row_group_size=self.options.row_group_size,
            )  # fmt: skip
            self._listing(rel_dir, False).append(name)
            result.records += table.num_rows
            result.files += 1
            result.bytes += size
            result.paths.append(f"{rel_dir}/{name.name}")
            bad = table.num_rows - table.column("raw").null_count
            result.raw += bad
            if bad:
                log.warning("archive: %d entries of %s kept whole in column raw (not JSON, or "
                            "a field of another type) in %s", bad, stream, name.name)  # fmt: skip
        return result
