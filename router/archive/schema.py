"""The Parquet schema of the archive (pure; stream entries are converted into it by
:mod:`router.archive.convert`).

One row per stream entry. Every field of the DESIGN.md record (v1, with the additions of
issues 15 and 17) is a column; the two sides are structs, the segment a ``map<string,
string>``, the contract a struct of string lists. Open-ended values are JSON text: a side's
``prediction`` (any JSON; ``prediction_text`` also holds it unquoted when it is a JSON
string) and ``usage``, ``fields`` (captured request inputs).

**Nothing is dropped.** A key the schema does not know (a field the next router adds, say) is
kept as JSON text in ``extra`` (top level) or ``<side>.extra``; an entry whose payload is not a
JSON object, or whose known fields have the wrong JSON type, is kept whole in ``raw`` (its
other columns null) and judged by the analyzer like a bad line of a file. **Schema
evolution**: when the record gains a field, the field becomes a new *nullable* column here
(files written earlier simply lack it; every reader fills it with null: DuckDB's
``union_by_name``, :mod:`router.archive.scan`), and :data:`ARCHIVE_SCHEMA_VERSION` grows; a
column is never renamed, retyped or removed. Each file's key-value metadata carries
``shadow_router.archive_schema`` (this version) and ``shadow_router.kind`` (pairs or outcomes).

Bookkeeping columns: ``stream_id`` (``<ms>-<seq>``: the entry's Redis id, unique per stream),
``stream`` (the stream key: one of a hot experiment's shards), ``stored_at`` (when Redis stored
it; the partition's hour comes from it).
"""

from __future__ import annotations

import pyarrow as pa

# 2: champion_repeat, contract_repeat, contract.changed (issue 17); per-side ttfb_ms,
#    duration_ms, bytes, streamed, events, usage, finish_reason, parse_error, and
#    client_aborted (issue 15)
ARCHIVE_SCHEMA_VERSION = 2
META_VERSION = b"shadow_router.archive_schema"
META_KIND = b"shadow_router.kind"

SIDE_KEYS = ("version", "status", "latency_ms", "prediction", "error", "truncated",
             "response_bytes", "ttfb_ms", "duration_ms", "bytes", "streamed", "events", "usage",
             "finish_reason", "parse_error")  # fmt: skip
RECORD_KEYS = ("v", "experiment", "request_id", "ts", "unit", "bucket", "served", "mirrored",
               "segment", "champion", "challenger", "contract", "champion_repeat",
               "contract_repeat", "client_aborted", "fields")  # fmt: skip
OUTCOME_KEYS = ("v", "id", "experiment", "request_id", "unit", "metric", "value", "ts")

SIDE_TYPE = pa.struct(
    [
        ("version", pa.string()),
        ("status", pa.int32()),
        ("latency_ms", pa.float64()),
        ("prediction", pa.string()),  # JSON text
        ("prediction_text", pa.string()),  # the prediction when it is a JSON string
        ("error", pa.string()),
        ("truncated", pa.bool_()),
        ("response_bytes", pa.int64()),
        ("extra", pa.string()),  # JSON object of keys this schema does not know
        # v2 (issue 15): timing and size of the answer, and what its text answer said
        ("ttfb_ms", pa.float64()),  # from the call to the first body byte
        ("duration_ms", pa.float64()),  # from the call to the end of the body
        ("bytes", pa.int64()),  # body size as received
        ("streamed", pa.bool_()),  # passed on as it arrived
        ("events", pa.int64()),  # server-sent events of a streamed answer
        ("usage", pa.string()),  # JSON text (an OpenAI-style usage object)
        ("finish_reason", pa.string()),
        ("parse_error", pa.string()),  # why the text answer could not be read
    ]
)
CONTRACT_TYPE = pa.struct(
    [("missing", pa.list_(pa.string())), ("extra", pa.list_(pa.string())),
     ("retyped", pa.list_(pa.string())), ("changed", pa.list_(pa.string()))]
)  # fmt: skip
CONTRACT_KEYS = ("missing", "extra", "retyped", "changed")
_BOOKKEEPING = [
    pa.field("stream_id", pa.string(), nullable=False),
    pa.field("stream", pa.string(), nullable=False),
    pa.field("stored_at", pa.timestamp("ms", tz="UTC"), nullable=False),
]
PAIRS_SCHEMA = pa.schema(
    [
        *_BOOKKEEPING,
        pa.field("v", pa.int16()),
        pa.field("experiment", pa.string()),
        pa.field("request_id", pa.string()),
        pa.field("ts", pa.float64()),
        pa.field("unit", pa.string()),
        pa.field("bucket", pa.int32()),
        pa.field("served", pa.string()),
        pa.field("mirrored", pa.bool_()),
        pa.field("segment", pa.map_(pa.string(), pa.string())),
        pa.field("champion", SIDE_TYPE),
        pa.field("challenger", SIDE_TYPE),
        pa.field("contract", CONTRACT_TYPE),
        pa.field("champion_repeat", SIDE_TYPE),  # v2: the noise floor's second champion answer
        pa.field("contract_repeat", CONTRACT_TYPE),  # v2
        pa.field("client_aborted", pa.bool_()),  # v2: the client left a streamed answer
        pa.field("fields", pa.string()),  # JSON text
        pa.field("extra", pa.string()),  # JSON object of unknown top-level keys
        pa.field("raw", pa.string()),  # the payload, when it does not fit the columns
    ]
)
OUTCOMES_SCHEMA = pa.schema(
    [
        *_BOOKKEEPING,
        pa.field("v", pa.int16()),
        pa.field("id", pa.string()),
        pa.field("experiment", pa.string()),
        pa.field("request_id", pa.string()),
        pa.field("unit", pa.string()),
        pa.field("metric", pa.string()),
        pa.field("value", pa.float64()),
        pa.field("ts", pa.float64()),
        pa.field("extra", pa.string()),
        pa.field("raw", pa.string()),
    ]
)


def schema_for(kind: str) -> pa.Schema:
    return PAIRS_SCHEMA if kind == "pairs" else OUTCOMES_SCHEMA


def with_metadata(schema: pa.Schema, kind: str) -> pa.Schema:
    return schema.with_metadata(
        {META_VERSION: str(ARCHIVE_SCHEMA_VERSION).encode(), META_KIND: kind.encode()}
    )
