"""Stream entries into Parquet partition files, exactly once (the archiver's write step).

:meth:`PartitionWriter.write_table` takes a batch of one stream's entries, converted
(:func:`~router.archive.convert.entries_table`, pages concatenated; :meth:`~PartitionWriter.write`
converts them itself), orders it by stream id and splits it by the UTC hour of the ids (Arrow and
numpy: no Python work per entry), leaves out entries some file of that partition already holds (a
crash between a file's rename and the stream acknowledgement makes the entries come back: own
pending entries on restart, or another archiver's ``XAUTOCLAIM``), and writes the rest as one
file per hour named by its id range (:mod:`router.archive.layout`). The caller acknowledges the
entries only after the write returned, so every entry ends up in exactly one file.

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

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from router.archive.convert import entries_table, id_seq, stored_ms
from router.archive.layout import Hour, PartName, partition_dir, shard_of
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

    def _already_written(self, rel_dir: str, shard: str, first: tuple[int, int],
                         last: tuple[int, int], refresh: bool) -> list[str]:  # fmt: skip
        found: list[str] = []
        for part in self._listing(rel_dir, refresh):
            if part.shard == shard and part.overlaps(first, last):
                pf = self.store.parquet(f"{rel_dir}/{part.name}")
                found += pf.read(columns=["stream_id"]).column(0).to_pylist()
        return found

    def write(
        self, kind: str, stream: str, ids: Sequence[str], payloads: Sequence[bytes], *,
        recheck: bool = False,
    ) -> WriteResult:  # fmt: skip
        """Archive entries of ``stream`` (``kind``: pairs or outcomes). ``recheck``: the entries
        may have been delivered before (pending, claimed): list their partitions afresh."""
        return self.write_table(kind, stream, entries_table(kind, stream, ids, payloads),
                                recheck=recheck)  # fmt: skip

    def write_table(self, kind: str, stream: str, table: pa.Table, *,
                    recheck: bool = False) -> WriteResult:  # fmt: skip
        """Archive converted entries of ``stream`` (:func:`~router.archive.convert.
        entries_table`, in any order; pages of one stream concatenated)."""
        result = WriteResult()
        if not table.num_rows:
            return result
        shard = shard_of(stream) if kind == "pairs" else "x"
        ids = table.column("stream_id").combine_chunks()
        ms = stored_ms(ids).to_numpy()
        seq = id_seq(ids).to_numpy()
        hours = ms // 3_600_000
        if len(ms) > 1 and not _ascending(ms, seq):
            order = np.lexsort((seq, ms))
            table, ms, seq, hours = table.take(order), ms[order], seq[order], hours[order]
            ids = table.column("stream_id").combine_chunks()
        bounds = np.flatnonzero(np.diff(hours)) + 1
        for lo, hi in zip([0, *bounds.tolist()], [*bounds.tolist(), len(ms)], strict=True):
            rel_dir = partition_dir(kind, self.experiment, Hour(int(hours[lo]) * 3600))
            part = table.slice(lo, hi - lo)
            pms, pseq = ms[lo:hi], seq[lo:hi]
            first, last = (int(pms[0]), int(pseq[0])), (int(pms[-1]), int(pseq[-1]))
            have = self._already_written(rel_dir, shard, first, last, recheck)
            if have:
                keep = pc.invert(pc.is_in(ids.slice(lo, hi - lo), pa.array(have, pa.string())))
                kept = int(pc.sum(keep).as_py() or 0)
                result.skipped += (hi - lo) - kept
                if not kept:
                    continue
                idx = np.flatnonzero(keep.to_numpy(zero_copy_only=False))
                part, pms, pseq = part.take(idx), pms[idx], pseq[idx]
                first, last = (int(pms[0]), int(pseq[0])), (int(pms[-1]), int(pseq[-1]))
            name = PartName(shard, first, last)
            size = self.store.write_table(
                rel_dir, name.name, part, compression=self.options.compression,
                compression_level=self.options.compression_level,
                row_group_size=self.options.row_group_size,
            )  # fmt: skip
            self._listing(rel_dir, False).append(name)
            result.records += part.num_rows
            result.files += 1
            result.bytes += size
            result.paths.append(f"{rel_dir}/{name.name}")
            bad = part.num_rows - part.column("raw").null_count
            result.raw += bad
            if bad:
                log.warning("archive: %d entries of %s kept whole in column raw (not JSON, or "
                            "a field of another type) in %s", bad, stream, name.name)  # fmt: skip
        return result


def _ascending(ms: np.ndarray, seq: np.ndarray) -> bool:
    """Whether ids (as their two parts) are in ascending order (a page of a stream is)."""
    dm = np.diff(ms)
    return bool(np.all((dm > 0) | ((dm == 0) & (np.diff(seq) > 0))))
