"""JSON lines into a polars frame of a given schema, and the line-by-line fallback for a page
polars refuses as a whole (pure; no I/O).

:func:`read_lines` parses a page at once in native code. When polars refuses the page (a malformed
line, a wrong type), :func:`line_by_line` checks each line alone (:func:`_line_problem`, which
mirrors polars' type rules and is never stricter), parses the lines it passes together again, and
names each bad line with a reason ``"<field>: <kind>"``. The semantic checks of a record or an
outcome come after, in :mod:`router.analysis.frames`.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import polars as pl


def empty(schema: dict[str, pl.DataType]) -> pl.DataFrame:
    return pl.DataFrame(schema=schema)


def read_lines(data: bytes, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    if not data or data.isspace():  # (isspace stops at the first other byte; strip copies)
        return empty(schema)
    return pl.read_ndjson(data, schema=schema)


_I64 = 1 << 63


def _type_problem(value: Any, dtype: Any, path: str) -> str | None:
    """Why polars would refuse ``value`` for a column of ``dtype`` (never stricter than it:
    whatever this passes, polars parses again and may still refuse)."""
    if value is None or isinstance(dtype, pl.String):
        return None  # a string column takes any JSON value (as its text)
    if isinstance(dtype, pl.Struct):
        if not isinstance(value, dict):
            return f"{path}: wrong type ({_json_type(value)})"
        for f in dtype.fields:
            why = _type_problem(value.get(f.name), f.dtype, f"{path}.{f.name}")
            if why:
                return why
        return None
    ok = True
    if isinstance(dtype, pl.Float64):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif isinstance(dtype, pl.Int64):
        ok = isinstance(value, int) and not isinstance(value, bool) and -_I64 <= value < _I64
    elif isinstance(dtype, pl.Boolean):
        ok = isinstance(value, bool)
    return None if ok else f"{path}: wrong type ({_json_type(value)})"


def _json_type(v: Any) -> str:
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    return "array" if isinstance(v, list) else "object" if isinstance(v, dict) else "null"


def _first_wins(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        out.setdefault(k, v)  # polars keeps the first of repeated keys
    return out


def _no_constants(name: str) -> Any:
    raise ValueError(name)  # NaN and Infinity are not JSON (polars refuses them too)


def _line_problem(line: bytes, schema: dict[str, pl.DataType], what: str = "record") -> str | None:
    """Why one line cannot be a ``what`` of ``schema`` before any semantic check, or None."""
    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            return f"{what}: not UTF-8"
        try:  # the standard library is more lenient (lone surrogates), as polars is
            doc = json.loads(text, parse_constant=_no_constants)
        except ValueError:
            return f"{what}: malformed JSON"
    if not isinstance(doc, dict):
        return f"{what}: not a JSON object"
    why = _fields_problem(doc, schema)
    if why is not None:  # orjson keeps the last of repeated keys, polars the first
        try:
            first = json.loads(line, object_pairs_hook=_first_wins, parse_constant=_no_constants)
        except ValueError:
            return why
        why = _fields_problem(first, schema)
    return why


def _fields_problem(doc: dict[str, Any], schema: dict[str, pl.DataType]) -> str | None:
    for name, dtype in schema.items():
        why = _type_problem(doc.get(name), dtype, name)
        if why:
            return why
    return None


def nonblank(lines: list[bytes]) -> list[int]:
    return [i for i, line in enumerate(lines) if line.strip()]


def line_by_line(
    data: bytes, schema: dict[str, pl.DataType], what: str = "record"
) -> tuple[pl.DataFrame, list[int], list[tuple[int, str]]]:
    """A page polars refused: each line checked alone (:func:`_line_problem`), the others
    parsed together again. Returns the frame, the line index of each row, the bad lines."""
    lines = data.split(b"\n")
    keep: list[int] = []
    bad: list[tuple[int, str]] = []
    for i in nonblank(lines):
        why = _line_problem(lines[i], schema, what)
        if why is None:
            keep.append(i)
        else:
            bad.append((i, why))
    df, rows, refused = _parse_subset(lines, keep, schema)
    return df, rows, bad + [(i, f"{what}: refused by the columnar parser") for i in refused]


def _parse_subset(
    lines: list[bytes], keep: list[int], schema: dict[str, pl.DataType]
) -> tuple[pl.DataFrame, list[int], list[int]]:
    """Parse lines ``keep`` together; should polars still refuse (something the line check
    let through), halve and retry, so only the lines it refuses alone are lost."""
    try:
        return read_lines(b"\n".join(lines[i] for i in keep), schema), keep, []
    except pl.exceptions.PolarsError:
        if len(keep) == 1:
            return empty(schema), [], keep
    mid = len(keep) // 2
    a, ra, xa = _parse_subset(lines, keep[:mid], schema)
    b, rb, xb = _parse_subset(lines, keep[mid:], schema)
    return pl.concat([a, b], how="vertical_relaxed"), ra + rb, xa + xb


def json_or_none(text: str) -> Any:
    """The value of a JSON text, or None when it is not JSON."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
