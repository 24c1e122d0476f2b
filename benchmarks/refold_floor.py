"""What a native columnar engine takes for the core of a raw re-fold, measured beside
``router analyze`` on the same archive window (runs interleaved, each its own process).

    python benchmarks/refold_floor.py [--archive DIR | --records N] [--rounds 2] [--json F]

``DIR`` is an archive written by ``archive_throughput.write_window`` (experiment ``bench``);
without it, a window of ``--records`` records over 7 days is written to a temporary directory
first (the shape of ``archive_throughput.py``'s window; 50M records take about 4 minutes).
Issue 14 asks a full re-fold from raw Parquet to run at 2,000,000 records/s on 2 cores; this
tells how far the analyzer's fold (Python driving numpy and polars, page by page) is from
what the same machine does in one native engine, in the same run (these shared machines'
speed varies up to 1.9x from day to day: only the ratio is worth quoting).

The floor is DuckDB (2 threads, ``memory_limit`` 1.2 GB) computing, in three queries over
the window's files:

1. per served variant and segment: requests, errors, latency sums and squares and a
   log-latency histogram per side, the paired prediction differences (sum, squares, absolute,
   decision flips at 0.5) and the label-joined quality sums, the labels joined by request id
   from the outcome files (the last label of a request);
2. per unit: its first exposure, requests and variants, with its conversions joined from the
   outcome files;
3. the request ids seen more than once (exact).

It is a floor, not the report: no sketches, bottom-k sample, segment caps, CUPED, contracts,
drift fields or text kinds; the engine's hash is not the analyzer's fingerprint. What it does
is what every re-fold must do at least: read and decode the columns, hash the request ids,
join the outcomes and group by variant, segment and unit.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

HERE = Path(__file__).resolve().parent


def _queries(d: str) -> list[str]:
    pairs = f"read_parquet('{d}/pairs/**/*.parquet', hive_partitioning = false)"
    outcomes = f"read_parquet('{d}/outcomes/**/*.parquet', hive_partitioning = false)"
    return [
        f"""
        WITH lab AS (
          SELECT hash(request_id) AS h, arg_max(value, stored_at) AS lab FROM {outcomes}
          WHERE request_id IS NOT NULL AND metric = 'label' AND raw IS NULL GROUP BY 1),
        p AS (
          SELECT hash(request_id) AS h, served, segment['country'] AS country,
                 segment['device'] AS device, champion.latency_ms AS cl,
                 challenger.latency_ms AS hl, champion.error IS NOT NULL AS ce,
                 challenger.error IS NOT NULL AS he,
                 TRY_CAST(champion.prediction AS DOUBLE) AS cp,
                 TRY_CAST(challenger.prediction AS DOUBLE) AS hp
          FROM {pairs} WHERE experiment = 'bench' AND raw IS NULL)
        SELECT served, country, device, count(*) AS n, sum(ce::INT) AS ce, sum(he::INT) AS he,
               sum(cl) AS scl, sum(cl * cl) AS scl2, sum(hl) AS shl, sum(hl * hl) AS shl2,
               histogram(floor(ln(cl) * 16)::INT) AS hist_c,
               histogram(floor(ln(hl) * 16)::INT) AS hist_h,
               sum(hp - cp) AS sd, sum((hp - cp) * (hp - cp)) AS sd2, sum(abs(hp - cp)) AS sad,
               sum(((cp >= 0.5) <> (hp >= 0.5))::INT) AS flips,
               count(lab) AS labelled, sum(lab) AS pos, sum(lab * cp) AS slc, sum(lab * hp) AS slh
        FROM p LEFT JOIN lab USING (h) GROUP BY ALL
        """,
        f"""
        WITH conv AS (
          SELECT unit, sum(value) AS conv FROM {outcomes}
          WHERE unit IS NOT NULL AND metric = 'converted' AND raw IS NULL GROUP BY 1),
        u AS (
          SELECT unit, min(ts) AS first_ts, count(*) AS n, min(served) AS variant,
                 count(DISTINCT served) AS variants
          FROM {pairs} WHERE experiment = 'bench' AND raw IS NULL AND unit IS NOT NULL
          GROUP BY 1)
        SELECT variant, variants, count(*) AS units, sum(n) AS requests,
               sum(coalesce(conv, 0)) AS conversions,
               sum(coalesce(conv, 0) * coalesce(conv, 0)) AS conversions2
        FROM u LEFT JOIN conv USING (unit) GROUP BY ALL
        """,
        f"""
        SELECT count(*) AS repeated FROM (
          SELECT hash(request_id) AS h FROM {pairs} WHERE raw IS NULL GROUP BY 1
          HAVING count(*) > 1)
        """,
    ]


def duck(d: str, memory_limit: str) -> dict[str, Any]:
    import duckdb

    con = duckdb.connect()
    con.execute("SET threads = 2")
    con.execute(f"SET memory_limit = '{memory_limit}'")
    con.execute("SET preserve_insertion_order = false")
    out: dict[str, Any] = {}
    for i, q in enumerate(_queries(d)):
        t = time.perf_counter()
        rows = con.execute(q).fetchall()
        out[f"query_{i + 1}_s"] = round(time.perf_counter() - t, 2)
        out[f"query_{i + 1}_rows"] = len(rows)
    n = con.execute(f"SELECT count(*) FROM read_parquet('{d}/pairs/**/*.parquet', "
                    "hive_partitioning = false)").fetchone()  # fmt: skip
    out["records"] = int(n[0]) if n else 0
    return out


def _child(argv: list[str]) -> dict[str, Any]:
    """Run ``argv`` as a process: its wall time, CPU and peak RSS (wait4: the one process;
    DuckDB's threads are its own), and its stdout."""
    t = time.perf_counter()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=HERE.parent)
    assert p.stdout is not None
    data = p.stdout.read()
    _pid, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode:
        raise SystemExit(f"{argv[:4]} failed ({p.returncode})")
    return {"wall_s": round(time.perf_counter() - t, 2),
            "cpu_s": round(ru.ru_utime + ru.ru_stime, 2), "peak_mib": round(ru.ru_maxrss / 1024),
            "out": data.decode()}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--archive", type=Path)
    ap.add_argument("--records", type=int, default=5_000_000,
                    help="without --archive: the records of the window written")
    ap.add_argument("--units", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--memory-limit", default="1200MB",
                    help="DuckDB's memory_limit (default 1200MB: with its own overhead, about "
                    "the 1.5 GB peak the target allows)")
    ap.add_argument("--skip-analyze", action="store_true", help="the floor alone")
    ap.add_argument("--duck", action="store_true", help=argparse.SUPPRESS)  # (the child)
    a = ap.parse_args()
    if a.duck:
        print(json.dumps(duck(str(a.archive), a.memory_limit)))
        return 0
    tmp = None
    if a.archive is None:
        sys.path.insert(0, str(HERE))
        from archive_throughput import write_window

        tmp = Path(tempfile.mkdtemp(prefix="refold-floor-"))
        t = time.perf_counter()
        write_window(tmp, a.records, 7, a.units)
        print(f"window of {a.records:,} records written in {time.perf_counter() - t:.0f} s",
              flush=True)  # fmt: skip
    try:
        return _compare(str((a.archive or tmp).resolve()), a)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _analyze(d: str) -> dict[str, Any]:
    """`router analyze` over the archive, measured as the other archive benchmarks measure it
    (``analyzer_throughput.run_analyze``)."""
    sys.path.insert(0, str(HERE))
    from analyzer_throughput import run_analyze

    got = run_analyze(["--archive", d, "--executor", "threads", "--workers", "2"])
    return {"wall_s": round(got["wall_s"], 2), "cpu_s": round(got["cpu_s"], 2),
            "peak_mib": round(got["peak_rss_mb"])}  # fmt: skip


def _floor(d: str, memory_limit: str) -> dict[str, Any]:
    got = _child([sys.executable, str(Path(__file__).resolve()), "--archive", d, "--duck",
                  "--memory-limit", memory_limit])  # fmt: skip
    return got | json.loads(got.pop("out"))


def _compare(d: str, a: argparse.Namespace) -> int:
    runs: dict[str, list[dict[str, Any]]] = {"analyze": [], "floor": []}
    for r in range(a.rounds):
        for name in ("analyze", "floor"):
            if name == "analyze" and a.skip_analyze:
                continue
            got = _analyze(d) if name == "analyze" else _floor(d, a.memory_limit)
            runs[name].append(got)
            print(f"round {r + 1} {name:>7}: {got['wall_s']:7.2f} s wall, {got['cpu_s']:7.2f} "
                  f"CPU-s, peak {got['peak_mib']:,} MiB", flush=True)  # fmt: skip
    records = runs["floor"][0]["records"]
    if a.skip_analyze:
        print(f"{records:,} records: native floor "
              f"{max(records / x['wall_s'] for x in runs['floor']):,.0f} records/s")
        return 0
    pairs = list(zip(runs["analyze"], runs["floor"], strict=True))
    result = {"records": records, "runs": runs,
              "analyze_records_per_s": max(records / x["wall_s"] for x in runs["analyze"]),
              "floor_records_per_s": max(records / x["wall_s"] for x in runs["floor"]),
              "wall_ratio_analyze_to_floor": median([x["wall_s"] / y["wall_s"] for x, y in pairs]),
              "cpu_ratio_analyze_to_floor": median([x["cpu_s"] / y["cpu_s"] for x, y in pairs])}
    print(f"{records:,} records: analyze {result['analyze_records_per_s']:,.0f} records/s, "
          f"native floor {result['floor_records_per_s']:,.0f} records/s; analyze/floor: wall "
          f"{result['wall_ratio_analyze_to_floor']:.2f}, CPU "
          f"{result['cpu_ratio_analyze_to_floor']:.2f} (medians of the rounds)")
    if a.json:
        a.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
