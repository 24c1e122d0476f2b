"""Archive throughput: the archiver (Redis → Parquet) and ``router analyze --archive``.

1. **Archiver**: N synthetic records (``router.demo.synth``) loaded into a throwaway
   redis-server, archived by :class:`router.archive.archiver.Archiver` in this process (consumer
   group, conversion, zstd Parquet, fsync, rename, XACK), twice (two consumer groups over the
   same stream, so both runs see the same data in the same session); records of two shapes,
   interleaved: ``v1`` (DESIGN.md v1 keys only) and ``today`` (with the per-side timing, size
   and text keys a router writes since issue 15), and their CPU ratio.
2. **Analysis over a window**: a window of W records over D days written directly as hour
   partitions (vectorised, the archiver's schema: every hour a file of pairs, outcomes an hour
   later), then ``router analyze --archive DIR --format json`` as a subprocess with each
   executor, sampling the resident memory of its process tree every 100 ms; and at half the
   records and at twice the units, for the memory growth per million records and per million
   units.

Usage::

    python benchmarks/archive_throughput.py                         # 200k archived, 5M window
    python benchmarks/archive_throughput.py --window-records 50000000 --units 1000000
    python benchmarks/archive_throughput.py --records 50000 --window-records 500000 --json o.json

Targets (issue 14): archiver >= 100,000 records/s in one process; full re-fold from raw Parquet
>= 2,000,000 records/s on 2 cores, peak RSS <= 1.5 GB at 50,000,000 records over 7 days.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from analyzer_throughput import run_analyze  # noqa: E402

from router.archive.layout import Hour, PartName, partition_dir  # noqa: E402
from router.archive.schema import (  # noqa: E402
    CONTRACT_TYPE,
    OUTCOMES_SCHEMA,
    PAIRS_SCHEMA,
    SIDE_TYPE,
    with_metadata,
)

EXP = "bench"
START = 1_795_000_000 // 3600 * 3600  # an hour boundary in 2026


# ---------------------------------------------------------------------- 1. the archiver
SHAPES = ("v1", "today")  # records as DESIGN.md v1; as the router writes them since issue 15


def _today(rec: dict[str, Any], i: int) -> dict[str, Any]:
    """A synthetic record with the per-side keys a router writes since issue 15 (a buffered
    answer: time to first byte and body size on every side that answered; every 50th a
    streamed text-style side with its event count and usage; every 200th client-aborted)."""
    for name in ("champion", "challenger"):
        side = rec.get(name)
        if side is None:
            continue
        lat = side["latency_ms"]
        side["ttfb_ms"] = round(lat * 0.8, 3)
        side["bytes"] = 120 + i % 40
        if i % 50 == 0:
            side |= {"streamed": True, "duration_ms": lat, "events": 12,
                     "usage": {"prompt_tokens": 9, "completion_tokens": 11},
                     "finish_reason": "stop"}  # fmt: skip
    if i % 200 == 0:
        rec["client_aborted"] = True
    return rec


def bench_archiver(n: int, shapes: list[str]) -> dict[str, Any]:
    """Each shape of record archived twice, the runs interleaved (A B A B) in one session."""
    import redis

    from router.archive.archiver import Archiver
    from router.archive.store import ArchiveStore
    from router.capture.redisproc import RedisProcess
    from router.config import ArchiveConfig
    from router.demo.synth import SynthSpec, generate

    tmp = Path(tempfile.mkdtemp(prefix="archive-bench-"))
    rp = RedisProcess(tmp / "redis", prefer_path=True, appendonly=False)
    rp.start()
    try:
        client = redis.Redis.from_url(rp.url)
        pipe = client.pipeline(transaction=False)
        for shape in shapes:
            for i, (rec, _rows) in enumerate(generate(SynthSpec(experiment=shape, n=n, seed=3))):
                doc = _today(rec, i) if shape == "today" else rec
                pipe.xadd(f"{shape}:pairs", {"r": orjson.dumps(doc)})
                if i % 5000 == 4999:
                    pipe.execute()
        pipe.execute()
        out: dict[str, Any] = {"records": n}
        runs: dict[str, list[dict[str, Any]]] = {s: [] for s in shapes}
        for run in range(2):
            for shape in shapes:
                # block_ms: ``run(until_idle=True)`` ends on a read that waits block_ms and
                # finds nothing; that last wait (1 s by default) is the benchmark's stop
                # condition, not archiving, so it is kept short (a live archiver never stops)
                cfg = ArchiveConfig(group=f"bench-{run}", block_ms=20)
                root = tmp / f"archive-{shape}-{run}"
                a = Archiver(client, ArchiveStore.open(str(root)), shape, cfg)
                t, c, rc = time.perf_counter(), time.process_time(), _cpu_of(rp)
                totals = a.run(until_idle=True)
                wall, cpu = time.perf_counter() - t, time.process_time() - c
                redis_cpu = _cpu_of(rp) - rc
                assert totals.records["pairs"] == n, totals
                size = sum(p.stat().st_size for p in root.rglob("*.parquet"))
                runs[shape].append({"wall_s": wall, "records_per_s": n / wall, "cpu_s": cpu,
                                    "cpu_s_per_100k": cpu * 1e5 / n,
                                    "redis_cpu_s": redis_cpu, "files": totals.files,
                                    "bytes_per_record": size / n})  # fmt: skip
                print(f"archiver ({shape} records) run {run + 1}: {n / wall:,.0f} records/s "
                      f"({wall:.2f} s, {cpu:.2f} CPU-s = {cpu * 1e5 / n:.2f} per 100k; "
                      f"redis-server {redis_cpu:.2f} CPU-s; {size / n:.1f} bytes a record in "
                      "Parquet)", flush=True)  # fmt: skip
        for shape in shapes:
            out[shape] = {"runs": runs[shape],
                          "records_per_s": max(r["records_per_s"] for r in runs[shape]),
                          "cpu_s": min(r["cpu_s"] for r in runs[shape])}  # fmt: skip
        if len(shapes) == 2:
            ratio = out[shapes[1]]["cpu_s"] / out[shapes[0]]["cpu_s"]
            out["cpu_ratio"] = ratio
            print(f"archiver CPU, {shapes[1]} / {shapes[0]} records: {ratio:.2f}", flush=True)
        out["records_per_s"] = out[shapes[-1]]["records_per_s"]
        return out
    finally:
        rp.stop()


def _cpu_of(rp: Any) -> float:
    """CPU seconds (user + system) the redis-server process has used (Linux /proc)."""
    try:
        fields = Path(f"/proc/{rp.proc.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, AttributeError, IndexError, ValueError):
        return float("nan")


# ---------------------------------------------------------------------- 2. a window of Parquet
def _side(rng: np.random.Generator, n: int, version: str, score: np.ndarray,
          err_rate: float, present: np.ndarray) -> pa.StructArray:  # fmt: skip
    err = rng.random(n) < err_rate
    status = np.where(err, 500, 200).astype(np.int32)
    lat = rng.lognormal(3.0, 0.4, n)
    pred = pc.cast(pa.array(np.round(score, 6)), pa.string())
    pred = pc.if_else(pa.array(err), pa.nulls(n, pa.string()), pred)
    null_s = pa.nulls(n, pa.string())
    given = {"version": pa.array([version] * n, pa.string()), "status": pa.array(status),
             "latency_ms": pa.array(lat), "prediction": pred,
             "error": pc.if_else(pa.array(err), pa.scalar("HTTP 500"), null_s)}  # fmt: skip
    arrays = [given.get(f.name, pa.nulls(n, f.type)) for f in SIDE_TYPE]  # (the rest null)
    return pa.StructArray.from_arrays(arrays, fields=list(SIDE_TYPE),
                                      mask=pa.array(~present))  # fmt: skip


def write_window(root: Path, records: int, days: int, units: int, seed: int = 5) -> dict[str, int]:
    """``records`` over ``days`` as hour files (pairs; outcomes an hour later)."""
    rng = np.random.default_rng(seed)
    hours = days * 24
    per_hour = records // hours
    unit_names = pa.array([f"u{i}" for i in range(units)])
    unit_bucket = rng.integers(0, 10_000, units)
    countries, devices = ["DE", "FR", "US", "BR", "IN"], ["ios", "android", "web"]
    unit_country = rng.integers(0, len(countries), units)
    unit_device = rng.integers(0, len(devices), units)
    unit_rate = np.clip(rng.normal(0.1, 0.03, units), 0.01, 0.5)
    n_out = 0
    rid_base = 0
    for h in range(hours):
        hour = Hour(START + h * 3600)
        n = per_hour
        ms = hour.start * 1000 + np.sort(rng.integers(0, 3_600_000, n))
        seq = np.zeros(n, dtype=np.int64)
        seq[1:] = np.where(ms[1:] == ms[:-1], 1, 0)
        seq = np.maximum.accumulate(seq) * 0 + seq  # (one repeat of a millisecond at most)
        ids = pc.binary_join_element_wise(pc.cast(pa.array(ms), pa.string()),
                                          pc.cast(pa.array(seq), pa.string()), "-")  # fmt: skip
        u = np.minimum(rng.zipf(1.2, n) - 1, units - 1)
        rid = pc.binary_join_element_wise(pa.array(["r"] * n),
                                          pc.cast(pa.array(np.arange(rid_base, rid_base + n)),
                                                  pa.string()), "")  # fmt: skip
        rid_base += n
        challenger = unit_bucket[u] < 5000
        s_champ = rng.beta(2, 5, n)
        s_chall = np.clip(s_champ + rng.normal(0, 0.05, n), 0, 1)
        keys = pa.array(np.tile(["country", "device"], n))
        vals = pa.array(np.column_stack([np.array(countries)[unit_country[u]],
                                         np.array(devices)[unit_device[u]]]).ravel())  # fmt: skip
        segment = pa.MapArray.from_arrays(pa.array(np.arange(0, 2 * n + 1, 2, dtype=np.int32)),
                                          keys, vals)  # fmt: skip
        ts = ms / 1000.0
        cols = {
            "stream_id": ids, "stream": pa.array([f"{EXP}:pairs"] * n),
            "stored_at": pa.array(ms).cast(pa.timestamp("ms", tz="UTC")),
            "v": pa.array(np.ones(n, np.int16)), "experiment": pa.array([EXP] * n),
            "request_id": rid, "ts": pa.array(ts), "unit": unit_names.take(pa.array(u)),
            "bucket": pa.array(unit_bucket[u].astype(np.int32)),
            "served": pa.array(np.where(challenger, "challenger", "champion")),
            "mirrored": pa.array(np.ones(n, bool)), "segment": segment,
            "champion": _side(rng, n, "champ-1", s_champ, 0.002, np.ones(n, bool)),
            "challenger": _side(rng, n, "chall-2", s_chall, 0.004, np.ones(n, bool)),
            "contract": pa.nulls(n, CONTRACT_TYPE), "fields": pa.nulls(n, pa.string()),
            "extra": pa.nulls(n, pa.string()), "raw": pa.nulls(n, pa.string()),
        }  # fmt: skip
        table = pa.Table.from_arrays([cols.get(f.name, pa.nulls(n, f.type))
                                      for f in PAIRS_SCHEMA],
                                     schema=with_metadata(PAIRS_SCHEMA, "pairs"))  # fmt: skip
        _write(root, "pairs", hour, table, ms, seq)
        # outcomes an hour later: a label for half the requests, conversions by unit
        lab = rng.random(n) < 0.5
        conv = rng.random(n) < unit_rate[u] * 0.3
        k_l, k_c = int(lab.sum()), int(conv.sum())
        m = k_l + k_c
        oms = np.sort((hour.start + 3600) * 1000 + rng.integers(0, 3_600_000, m))
        oseq = np.arange(m, dtype=np.int64)
        oids = pc.binary_join_element_wise(pc.cast(pa.array(oms), pa.string()),
                                           pc.cast(pa.array(oseq), pa.string()), "-")  # fmt: skip
        label = (rng.random(k_l) < s_chall[lab]).astype(np.float64)
        ocols = {
            "stream_id": oids, "stream": pa.array([f"{EXP}:outcomes"] * m),
            "stored_at": pa.array(oms).cast(pa.timestamp("ms", tz="UTC")),
            "v": pa.array(np.ones(m, np.int16)), "id": pa.nulls(m, pa.string()),
            "experiment": pa.array([EXP] * m),
            "request_id": pa.concat_arrays([rid.filter(pa.array(lab)),
                                            pa.nulls(k_c, pa.string())]),
            "unit": pa.concat_arrays([pa.nulls(k_l, pa.string()),
                                      unit_names.take(pa.array(u[conv]))]),
            "metric": pa.array(["label"] * k_l + ["converted"] * k_c),
            "value": pa.array(np.concatenate([label, np.ones(k_c)])),
            "ts": pa.array(np.concatenate([ts[lab], ts[conv]]) + 600.0),
            "extra": pa.nulls(m, pa.string()), "raw": pa.nulls(m, pa.string()),
        }  # fmt: skip
        oschema = with_metadata(OUTCOMES_SCHEMA, "outcomes")
        otable = pa.Table.from_arrays([ocols[f.name] for f in OUTCOMES_SCHEMA], schema=oschema)
        _write(root, "outcomes", Hour(hour.start + 3600), otable, oms, oseq)
        n_out += m
    return {"records": per_hour * hours, "outcomes": n_out, "hours": hours}


def _write(root: Path, kind: str, hour: Hour, table: pa.Table, ms: np.ndarray,
           seq: np.ndarray) -> None:  # fmt: skip
    d = root / partition_dir(kind, EXP, hour)
    d.mkdir(parents=True, exist_ok=True)
    name = PartName("x", (int(ms[0]), int(seq[0])), (int(ms[-1]), int(seq[-1]))).name
    pq.write_table(table, d / name, compression="zstd", row_group_size=128 * 1024)


def bench_window(records: int, days: int, units: int, executors: list[str],
                 scale_runs: bool, rollups: bool = True) -> dict[str, Any]:  # fmt: skip
    tmp = Path(tempfile.mkdtemp(prefix="archive-window-"))
    out: dict[str, Any] = {"records": records, "days": days, "units": units, "runs": []}

    def one(tag: str, n: int, u: int, executor: str, rollups: bool = False) -> dict[str, Any]:
        root = tmp / f"{n}-{u}"
        if not root.exists():
            t = time.perf_counter()
            info = write_window(root, n, days, u)
            size = sum(p.stat().st_size for p in root.rglob("*.parquet"))
            print(f"wrote {info['records']:,} records and {info['outcomes']:,} outcomes "
                  f"({size / 2**20:.0f} MiB) in {time.perf_counter() - t:.1f} s", flush=True)
            (root / "info.json").write_text(json.dumps(info | {"bytes": size}))
        info = json.loads((root / "info.json").read_text())
        extra = ["--rollups"] if rollups else []
        r = run_analyze(["--archive", str(root), "--executor", executor, "--workers", "2",
                         *extra])  # fmt: skip
        row = {"tag": tag, "executor": executor, "records": info["records"],
               "outcomes": info["outcomes"], "units": u, "parquet_mb": info["bytes"] / 2**20,
               **r, "records_per_s": info["records"] / r["wall_s"]}  # fmt: skip
        print(f"{tag:>10} {executor:>9}: {row['records_per_s']:>12,.0f} records/s, "
              f"{r['wall_s']:.1f} s, peak {r['peak_rss_mb']:.0f} MB", flush=True)
        out["runs"].append(row)
        return row

    for ex in executors:
        one("full", records, units, ex)
    if rollups:  # `router rollup` over every hour, then the window from the rollups
        t, c = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run([sys.executable, "-m", "router", "rollup", "--archive",
                        str(tmp / f"{records}-{units}"), "--experiment", EXP],
                       check=True, cwd=ROOT, capture_output=True)  # fmt: skip
        c2 = resource.getrusage(resource.RUSAGE_CHILDREN)
        size = sum(p.stat().st_size for p in (tmp / f"{records}-{units}" / "rollups").rglob("*"))
        out["rollup_build"] = {"wall_s": time.perf_counter() - t, "bytes": size,
                               "cpu_s": c2.ru_utime + c2.ru_stime - c.ru_utime - c.ru_stime}
        print(f"router rollup: {out['rollup_build']['wall_s']:.1f} s, "
              f"{size / 2**20:.0f} MiB of rollups", flush=True)
        for ex in executors[:1]:
            one("rollups", records, units, ex, rollups=True)
    if scale_runs:
        half = one("half", records // 2, units, executors[0])
        full = next(r for r in out["runs"] if r["tag"] == "full" and r["executor"] == executors[0])
        more = one("2x units", records, units * 2, executors[0])
        out["mb_per_million_records"] = ((full["peak_rss_mb"] - half["peak_rss_mb"])
                                         / ((full["records"] - half["records"]) / 1e6))  # fmt: skip
        out["mb_per_million_units"] = ((more["peak_rss_mb"] - full["peak_rss_mb"])
                                       / (units / 1e6))  # fmt: skip
        print(f"memory: {out['mb_per_million_records']:.0f} MB per million records, "
              f"{out['mb_per_million_units']:.0f} MB per million units", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=200_000, help="records archived from Redis")
    ap.add_argument("--window-records", type=int, default=5_000_000)
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--units", type=int, default=200_000)
    ap.add_argument("--executors", default="threads,processes")
    ap.add_argument("--no-scale", action="store_true", help="skip the half/2x-units runs")
    ap.add_argument("--no-rollups", action="store_true",
                    help="skip `router rollup` and the window from rollups")
    ap.add_argument("--shapes", default=",".join(SHAPES),
                    help="records archived: v1 (DESIGN.md v1 keys), today (issue 15's keys)")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    os.environ.setdefault("POLARS_MAX_THREADS", "2")
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(),
                                           "python": platform.python_version()}}
    if a.records:
        results["archiver"] = bench_archiver(a.records, a.shapes.split(","))
    if a.window_records:
        results["window"] = bench_window(a.window_records, a.days, a.units,
                                         a.executors.split(","), not a.no_scale,
                                         not a.no_rollups)  # fmt: skip
    if a.json:
        a.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
