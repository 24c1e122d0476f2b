"""The archive: captured pairs and outcomes as Apache Parquet, partitioned by hour, for weeks.

Owns the Parquet schema (:mod:`.schema`; stream entries converted into it by :mod:`.convert`),
the partition layout and file names (:mod:`.layout`), the storage (:mod:`.store`: a directory
or an object store through pyarrow file systems), the exactly-once write step
(:mod:`.writer`), the long-running consumer-group archiver (:mod:`.archiver`) and the reading
side (:mod:`.scan`: the files of a window, coverage, and
unreadable files named and skipped).

Sits beside the analysis, above capture: may import :mod:`router.capture` and the foundation,
never the sidecar, analysis, promotion or the demo (import-linter contracts in pyproject.toml);
the analysis reads archives through :mod:`.scan`.

Start reading at :mod:`.layout` (where a record goes), then :class:`.archiver.Archiver`.
"""
