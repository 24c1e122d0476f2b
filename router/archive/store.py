"""The archive's storage: a local directory or an object store, through pyarrow file systems.

``ArchiveStore.open(uri)`` takes a path (``/var/lib/router/archive``, ``file:///…``) or an
object-store URI understood by ``pyarrow.fs.FileSystem.from_uri``: ``s3://bucket/prefix``
(credentials and region from the usual ``AWS_*`` variables and files; an S3-compatible server
with ``?endpoint_override=host:port&scheme=http``), ``gs://…``, ``abfs://…``.

**Durable, then visible.** Locally a file is written under a dot-name in its partition
directory, flushed and fsynced, renamed into place, and the directory fsynced: a reader (or a
crash) sees the whole file or none of it. On an object store an object only appears once its
upload completes, so it is written under its final name directly.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

TMP_PREFIX = ".part-"
STALE_TMP_S = 3600.0  # a temporary file this old is a crashed writer's: deleted when seen


class StoreError(OSError):
    """The archive location cannot be read or written (named, with the cause)."""


@dataclass(frozen=True, slots=True)
class Entry:
    name: str
    is_dir: bool
    size: int
    mtime: float | None


class ArchiveStore:
    def __init__(self, fs: pafs.FileSystem, root: str, uri: str) -> None:
        self.fs, self.root, self.uri = fs, root.rstrip("/"), uri
        self.local = isinstance(fs, pafs.LocalFileSystem)

    @classmethod
    def open(cls, uri: str) -> ArchiveStore:
        if "://" not in uri:
            path = os.path.abspath(uri)
            return cls(pafs.LocalFileSystem(), path, uri)
        try:
            fs, path = pafs.FileSystem.from_uri(uri)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
            raise StoreError(f"archive URI {uri!r}: {exc}") from None
        return cls(fs, path, uri)

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def describe(self, rel: str = "") -> str:
        """A location as the user wrote it (for messages)."""
        base = self.uri.split("?", 1)[0].rstrip("/")
        return f"{base}/{rel}" if rel else base

    # ------------------------------------------------------------------ reading
    def list_dir(self, rel: str) -> list[Entry]:
        """The entries directly under ``rel`` (empty when it does not exist)."""
        sel = pafs.FileSelector(self.path(rel), allow_not_found=True, recursive=False)
        try:
            infos = self.fs.get_file_info(sel)
        except OSError as exc:
            raise StoreError(f"cannot list {self.describe(rel)}: {exc}") from None
        out = []
        for info in infos:
            mtime = info.mtime.timestamp() if info.mtime is not None else None
            out.append(Entry(info.base_name, info.type == pafs.FileType.Directory,
                             int(info.size or 0), mtime))  # fmt: skip
        return out

    def parquet(self, rel: str, *, metadata: pq.FileMetaData | None = None,
                read_dictionary: list[str] | None = None) -> pq.ParquetFile:  # fmt: skip
        """An open Parquet file (raises on a file that is not Parquet or is truncated);
        ``metadata``: its footer, already read; ``read_dictionary``: leaf column paths read as
        Arrow dictionaries."""
        try:
            return pq.ParquetFile(self.fs.open_input_file(self.path(rel)), metadata=metadata,
                                  read_dictionary=read_dictionary)  # fmt: skip
        except FileNotFoundError:
            raise
        except (pa.ArrowException, OSError) as exc:
            raise StoreError(f"{self.describe(rel)}: not a readable Parquet file: {exc}") from None

    def check(self, must_exist: bool = False) -> None:
        """Fail now, with a clear error, when the location cannot be listed (a missing
        bucket, no credentials, an unreachable endpoint); with ``must_exist`` (readers), also
        when the directory does not exist."""
        try:
            info = self.fs.get_file_info(self.root)
        except OSError as exc:
            raise StoreError(f"archive {self.describe()} unreachable: {exc}") from None
        if must_exist and self.local and info.type == pafs.FileType.NotFound:
            raise StoreError(f"archive {self.describe()}: no such directory")
        if not self.local:
            bucket = self.root.split("/", 1)[0]
            try:
                found = self.fs.get_file_info(bucket).type != pafs.FileType.NotFound
            except OSError as exc:
                raise StoreError(f"archive {self.describe()} unreachable: {exc}") from None
            if not found:
                raise StoreError(f"archive {self.describe()}: bucket {bucket!r} does not exist")
        if info.type == pafs.FileType.File:
            raise StoreError(f"archive {self.describe()} is a file, not a directory")

    # ------------------------------------------------------------------ writing
    def write_table(self, rel_dir: str, name: str, table: pa.Table, **options: Any) -> int:
        """Write ``table`` as ``rel_dir/name`` durably and atomically; its size in bytes."""
        final = f"{self.path(rel_dir)}/{name}"
        try:
            if not self.local:
                self.fs.create_dir(self.path(rel_dir), recursive=True)
                pq.write_table(table, final, filesystem=self.fs, **options)
                return int(self.fs.get_file_info(final).size or 0)
            os.makedirs(self.path(rel_dir), exist_ok=True)
            tmp = f"{self.path(rel_dir)}/{TMP_PREFIX}{name}.{socket.gethostname()}.{os.getpid()}"
            with open(tmp, "wb") as fh:
                pq.write_table(table, fh, **options)
                fh.flush()
                os.fsync(fh.fileno())
                size = fh.tell()
            os.replace(tmp, final)
            _fsync_dir(self.path(rel_dir))
            return size
        except OSError as exc:
            raise StoreError(f"cannot write {self.describe(rel_dir + '/' + name)}: {exc}") from None

    def write_bytes(self, rel_dir: str, name: str, data: bytes) -> int:
        """Write ``data`` as ``rel_dir/name`` durably and atomically (as :meth:`write_table`)."""
        final = f"{self.path(rel_dir)}/{name}"
        try:
            if not self.local:
                self.fs.create_dir(self.path(rel_dir), recursive=True)
                with self.fs.open_output_stream(final) as out:
                    out.write(data)
                return len(data)
            os.makedirs(self.path(rel_dir), exist_ok=True)
            tmp = f"{self.path(rel_dir)}/{TMP_PREFIX}{name}.{socket.gethostname()}.{os.getpid()}"
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
            _fsync_dir(self.path(rel_dir))
            return len(data)
        except OSError as exc:
            raise StoreError(f"cannot write {self.describe(rel_dir + '/' + name)}: {exc}") from None

    def read_bytes(self, rel: str) -> bytes:
        """A whole file (FileNotFoundError when it is not there)."""
        try:
            with self.fs.open_input_stream(self.path(rel)) as fh:
                data: bytes = fh.read()
                return data
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise StoreError(f"cannot read {self.describe(rel)}: {exc}") from None

    def delete_dir(self, rel: str) -> None:
        try:
            self.fs.delete_dir(self.path(rel))
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StoreError(f"cannot delete {self.describe(rel)}: {exc}") from None

    def delete_file(self, rel: str) -> None:
        try:
            self.fs.delete_file(self.path(rel))
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StoreError(f"cannot delete {self.describe(rel)}: {exc}") from None

    def remove_stale_tmp(self, rel_dir: str, entries: list[Entry]) -> int:
        """Delete crashed writers' temporary files in ``rel_dir`` (older than an hour)."""
        now, n = time.time(), 0
        for e in entries:
            stale = e.mtime is not None and now - e.mtime > STALE_TMP_S
            if e.name.startswith(TMP_PREFIX) and stale:
                self.delete_file(f"{rel_dir}/{e.name}")
                n += 1
        return n


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
