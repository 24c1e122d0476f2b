"""The outcome index's compact request-joined rows: (metric, value) codes that come back
exactly, the fallback past the code caps, rows added after a finalise, pickling."""

from __future__ import annotations

import pickle

import numpy as np
import polars as pl
import pytest

from router.analysis import outcomes_index as oi_mod
from router.analysis.frames import OUTCOME_SCHEMA, rid_hash
from router.analysis.outcomes_index import OutcomeIndex

ODD = [0.0, -0.0, 1.0, float("nan"), float("inf"), -float("inf"), 5e-324, -1.5]


def _frame(rng: np.random.Generator, n: int, values: list[float], start: int = 0) -> pl.DataFrame:
    """``n`` outcome rows of a few requests (several rows a request), metrics a to c, values
    drawn from ``values``, a third of them with an id."""
    rid = [f"r{int(x)}" for x in rng.integers(0, max(1, n // 3), n)]
    return pl.DataFrame(
        {
            "id": [f"i{start + k}" if k % 3 == 0 else None for k in range(n)],
            "request_id": rid,
            "unit": [None] * n,
            "metric": [["a", "b", "c"][int(x)] for x in rng.integers(0, 3, n)],
            "value": [values[int(x)] for x in rng.integers(0, len(values), n)],
            "ts": [1.7e9 + start + k for k in range(n)],
            "experiment": ["e"] * n,
        },
        schema=OUTCOME_SCHEMA,
    )


def _expected(df: pl.DataFrame) -> tuple[list[int], list[str], list[int]]:
    """The rows as the index must hold them: sorted by fingerprint, stable (no duplicates
    here); values by their bits."""
    srt = df.with_columns(h=rid_hash(pl.col("request_id"))).sort("h", maintain_order=True)
    bits = srt["value"].to_numpy().view(np.int64).tolist()
    return srt["h"].to_list(), srt["metric"].to_list(), bits


def _held(oi: OutcomeIndex) -> tuple[list[int], list[str], list[int]]:
    h, m, v = oi.rows
    return h.tolist(), [oi.metric_names[i] for i in m], v.view(np.int64).tolist()


def _joined(oi: OutcomeIndex, q: np.ndarray) -> tuple[list[int], list[int], list[int]]:
    rec, met, val = oi.join(q)
    return rec.tolist(), met.tolist(), val.view(np.int64).tolist()


def _by_lookup(oi: OutcomeIndex, q: np.ndarray) -> tuple[list[int], list[int], list[int]]:
    left, right = oi.lookup(q)
    _h, met, val = oi.rows
    at = [j for i in range(q.size) for j in range(int(left[i]), int(right[i]))]
    rec = [i for i in range(q.size) for _ in range(int(right[i] - left[i]))]
    return rec, met[at].tolist(), val[at].view(np.int64).tolist()


def test_codes_round_trip_exactly() -> None:
    """-0.0, NaN, infinities and subnormals come back bit for bit, through the join too."""
    rng = np.random.default_rng(1)
    df = _frame(rng, 600, ODD)
    oi = OutcomeIndex()
    oi.add_frame(df, [], "e")
    assert _held(oi) == _expected(df)
    req = oi._finalise()["req"]
    assert req.esc_pos.size == 0 and req.runs  # (all coded; requests with several rows)
    q = np.unique(np.concatenate([oi.rows[0], rng.integers(-(2**63), 2**63 - 1, 50)]))
    assert _joined(oi, q) == _by_lookup(oi, q)


def test_past_the_code_caps_values_are_kept_apart() -> None:
    """A metric of many values takes :data:`CODES_PER_METRIC` codes and the rest of its rows
    escape (their metric and value kept exactly); with the table full, every new pair
    escapes. Counts and kinds equal those over the rows."""
    rng = np.random.default_rng(2)
    many = [float(x) for x in rng.normal(size=400)] + ODD
    parts = [_frame(rng, 700, many, 0), _frame(rng, 500, [0.0, 1.0], 10_000)]
    oi = OutcomeIndex()
    for p in parts:
        oi.add_frame(p, [], "e")
    df = pl.concat(parts)
    assert _held(oi) == _expected(df)
    req = oi._finalise()["req"]
    assert req.esc_pos.size and len(oi._codes) <= oi_mod.CODES
    want = df.group_by("metric").agg(pl.len(), pl.col("value").is_in([0.0, 1.0]).all())
    for name, n, binary in want.iter_rows():
        assert oi.metrics[name] == {"n": n, "binary": binary}
    q = np.unique(np.concatenate([oi.rows[0], oi.rows[0] + 1]))
    assert _joined(oi, q) == _by_lookup(oi, q)
    # a full table: pairs seen after it filled escape
    small = OutcomeIndex()
    small._codes = {(9, k): k for k in range(oi_mod.CODES)}
    small.add_frame(parts[1], [], "e")
    assert _held(small) == _expected(parts[1])
    assert small._finalise()["req"].esc_pos.size == parts[1].height


def test_rows_added_after_a_finalise_and_a_pickled_index() -> None:
    """Rows added after the index was finalised are sorted in with those held (escaped ones
    too; replays counted once); a pickled copy joins as the original does."""
    rng = np.random.default_rng(3)
    many = [float(x) for x in rng.normal(size=300)]
    a, b = _frame(rng, 400, many, 0), _frame(rng, 400, ODD, 5_000)
    oi = OutcomeIndex()
    oi.add_frame(a, [], "e")
    assert oi.metrics  # (finalised)
    oi.add_frame(b, [], "e")
    oi.add_frame(a.head(40), [], "e")  # (replays)
    assert oi.duplicate_rows == 40
    both = pl.concat([a, b])
    assert _held(oi) == _expected(both)
    copy = pickle.loads(pickle.dumps(oi))
    q = np.unique(np.concatenate([oi.rows[0], rng.integers(-(2**63), 2**63 - 1, 50)]))
    assert _joined(copy, q) == _joined(oi, q) == _by_lookup(oi, q)
    assert copy.metrics == oi.metrics and copy.by_unit.equals(oi.by_unit)


def test_unit_rows_keep_their_metric_names() -> None:
    oi = OutcomeIndex()
    df = pl.DataFrame(
        {
            "id": [None, "x", None],
            "request_id": [None, None, "r1"],
            "unit": ["u1", "u2", None],
            "metric": ["conv", "rev", "label"],
            "value": [1.0, 2.5, 0.0],
            "ts": [1.0, 2.0, 3.0],
            "experiment": ["e"] * 3,
        },
        schema=OUTCOME_SCHEMA,
    )
    oi.add_frame(df, [], "e")
    assert oi.by_unit.to_dicts() == [
        {"unit": "u1", "metric": "conv", "value": 1.0, "ts": 1.0},
        {"unit": "u2", "metric": "rev", "value": 2.5, "ts": 2.0},
    ]
    assert oi.valid == 3 and oi.metrics["rev"] == {"n": 1, "binary": False}


def test_unit_rows_values_coded_or_kept() -> None:
    """Unit-joined values by code when their pairs have one (bit for bit), kept as they are
    when one has none."""
    for values in (ODD, [float(x) for x in range(40)] + ODD):
        n = len(values)
        df = pl.DataFrame(
            {
                "id": [None] * n,
                "request_id": [None] * n,
                "unit": [f"u{k}" for k in range(n)],
                "metric": ["m"] * n,
                "value": values,
                "ts": [float(k) for k in range(n)],
                "experiment": ["e"] * n,
            },
            schema=OUTCOME_SCHEMA,
        )
        oi = OutcomeIndex()
        oi.add_frame(df, [], "e")
        held = oi._finalise()["units"]
        assert ("c" in held.columns) == (n <= oi_mod.CODES_PER_METRIC)
        got = oi.by_unit
        assert got["value"].to_numpy().view(np.int64).tolist() == (
            np.array(values).view(np.int64).tolist()
        )
        assert got.select("unit", "metric", "ts").equals(df.select("unit", "metric", "ts"))
        copy = pickle.loads(pickle.dumps(oi))
        assert copy.by_unit.equals(got, null_equal=True)


@pytest.mark.parametrize("chunk", [1, 7, 1 << 22])
def test_bucket_starts_counted_by_chunks_equal_one_bincount(
    chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The directory's bucket starts, counted a chunk of sorted fingerprints at a time, are
    those of one bincount over every row's bucket (edge fingerprints and runs included)."""
    oix = oi_mod
    monkeypatch.setattr(oix, "_BUCKET_CHUNK", chunk)
    rng = np.random.default_rng(3)
    edges = np.array([np.iinfo(np.int64).min, -1, 0, 1, np.iinfo(np.int64).max], np.int64)
    for n in (1, 2, 5, 1000):
        h = np.sort(np.concatenate([rng.integers(-(2**63), 2**63 - 1, n, dtype=np.int64),
                                    edges, edges[:2]]))  # fmt: skip
        for bits in (1, 3, max(1, h.size.bit_length() - 1)):
            want = np.zeros((1 << bits) + 1, np.int64)
            np.cumsum(np.bincount(oix._bucket(h, bits), minlength=1 << bits), out=want[1:])
            got = oix._bucket_starts(h, bits)
            assert got.dtype == np.int32 and got.tolist() == want.tolist()


def test_repeats_within_and_across_batches_keep_the_first() -> None:
    """A row whose identity came before (the same ``id``, even with other content; without
    an id, the same content), in its own batch or any earlier one, is dropped and the first
    kept; the rest are merged from the sorted batches in one stable order. Checked against
    a plain reading of the rules, with escaped values among them."""
    rng = np.random.default_rng(4)
    many = [float(x) for x in rng.normal(size=200)] + ODD
    parts = [_frame(rng, 300, many, 1000 * k) for k in range(6)]
    parts.append(parts[0].head(30))  # replays of a batch long gone (ids and contents)
    other = (parts[2].filter(pl.col("id").is_not_null()).head(20)
             .with_columns(value=pl.lit(9.0), request_id=pl.lit("r-other")))  # fmt: skip
    parts.append(pl.concat([other, parts[3].head(10), parts[3].head(10)]))  # (and in-batch)
    oi = OutcomeIndex()
    for p in parts:
        oi.add_frame(p, [], "e")
    rows = pl.concat(parts)
    seen: set[tuple[object, ...]] = set()
    first = []
    for r in rows.iter_rows(named=True):
        bits = np.float64(r["value"]).view(np.int64).item()
        key = (("id", r["id"]) if r["id"] is not None
               else ("c", r["request_id"], r["unit"], r["metric"], bits, r["ts"]))  # fmt: skip
        first.append(key not in seen)
        seen.add(key)
    kept = rows.filter(pl.Series(first))
    assert kept.height < rows.height - 60
    assert _held(oi) == _expected(kept)
    assert oi.duplicate_rows == rows.height - kept.height
    assert oi._finalise()["req"].esc_pos.size  # (escaped rows merged with their values)
    q = np.unique(np.concatenate([oi.rows[0], oi.rows[0] - 1]))
    assert _joined(oi, q) == _by_lookup(oi, q)


@pytest.mark.parametrize("bits", [None, 24, 26])
def test_rows_holding_their_low_40_bits_join_as_whole_fingerprints(bits: int | None) -> None:
    """From :data:`SPLIT_BITS` directory bits on (about 17M rows; forced here), a row holds
    only its fingerprint's low 40 bits, the rest being its bucket's: the join and the
    fingerprints put together again equal those of whole fingerprints, extremes included."""
    rng = np.random.default_rng(5)
    h = rng.integers(-(2**63), 2**63 - 1, 5000, dtype=np.int64)
    h[1::7] = h[0::7][: h[1::7].size]  # (requests of several rows)
    h = np.sort(np.concatenate([h, [-(2**63), -(2**63), 2**63 - 1, 0, -1]]))
    codes = rng.integers(0, 10, h.size).astype(np.uint8)
    table = np.arange(oi_mod.CODES + 1)
    req = oi_mod._Requests.of(h.copy(), codes.copy(), np.zeros(0, np.uint16), np.zeros(0),
                              table.astype(np.uint16), table.astype(float), bits=bits)  # fmt: skip
    assert req.split == (bits is not None) and req.h.size == (0 if bits else h.size)
    assert np.array_equal(req.fingerprints(), h)
    far = rng.integers(-(2**63), 2**63 - 1, 500, dtype=np.int64)
    q = np.unique(np.concatenate([h, h[1:] - 1, h[:-1] + 1, far]))
    rec, met, _val = req.join(q)
    left, right = np.searchsorted(h, q, "left"), np.searchsorted(h, q, "right")
    assert rec.tolist() == [i for i in range(q.size) for _ in range(right[i] - left[i])]
    assert met.tolist() == [int(codes[j]) for i in range(q.size) for j in range(left[i], right[i])]
