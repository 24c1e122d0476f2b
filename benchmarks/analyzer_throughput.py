"""Analyzer throughput: ``router analyze`` end to end over N synthetic records with outcomes.

Generates a seeded synthetic experiment (``router.demo.synth``: 100% mirrored pairs, a live
50% split, Zipf units, labels and conversions), writes it as JSONL and loads it into a throwaway
redis-server, then times ``router analyze --format json`` as a subprocess from each source,
with ``--workers 1`` and ``--workers N`` (pages parsed at once beside the folding thread),
sampling the resident memory of its process tree every 100 ms.

Usage::

    python benchmarks/analyzer_throughput.py                      # 1,000,000 records
    python benchmarks/analyzer_throughput.py --records 200000 --json out.json

Targets (issue 4): >= 250,000 records/s from JSONL, >= 100,000 records/s from Redis, peak
memory <= 512 MB independent of the record count. The same run also times a process that only
parses the records file with polars (the floor of this design): the ratio of each JSONL run to
it is what to compare between runs, since this shared machine's speed moves by 30% over an hour.
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

import orjson
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from router.capture.redisproc import RedisProcess  # noqa: E402
from router.demo.synth import SynthSpec, generate  # noqa: E402


def write_data(tmp: Path, n: int, units: int) -> tuple[Path, Path, int]:
    pairs, outs = tmp / "pairs.jsonl", tmp / "outcomes.jsonl"
    n_out = 0
    spec = SynthSpec(experiment="bench", n=n, units=units, conversion_uplift=0.01, seed=7)
    with pairs.open("wb") as fp, outs.open("wb") as fo:
        for rec, rows in generate(spec):
            fp.write(orjson.dumps(rec) + b"\n")
            for o in rows:
                fo.write(orjson.dumps(o) + b"\n")
                n_out += 1
    return pairs, outs, n_out


def load_redis(url: str, pairs: Path, outs: Path) -> None:
    import redis

    r = redis.Redis.from_url(url)
    for key, path in (("bench:pairs", pairs), ("bench:outcomes", outs)):
        pipe = r.pipeline(transaction=False)
        last_ms, seq, k = -1, 0, 0
        with path.open("rb") as fh:
            for line in fh:
                ts = orjson.loads(line)["ts"]
                ms = int(ts * 1000)
                if ms <= last_ms:
                    ms, seq = last_ms, seq + 1
                else:
                    seq = 0
                last_ms = ms
                pipe.xadd(key, {"r": line.rstrip(b"\n")}, id=f"{ms}-{seq}")
                k += 1
                if k % 5000 == 0:
                    pipe.execute()
        pipe.execute()


def run_analyze(args: list[str], tree: Path = ROOT) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "router", "analyze", "--experiment", "bench", "--split", "0.5",
           "--format", "json", "-o", os.devnull, *args]
    env = None if tree == ROOT else dict(os.environ, PYTHONPATH=str(tree))
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu0 = ru.ru_utime + ru.ru_stime
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=tree, stderr=subprocess.PIPE, env=env)
    ps = psutil.Process(proc.pid)
    peak = peak_one = 0
    while proc.poll() is None:
        try:
            procs = [ps, *ps.children(recursive=True)]
            rss = [p.memory_info().rss for p in procs]
            peak, peak_one = max(peak, sum(rss)), max(peak_one, max(rss))
        except psutil.Error:
            pass
        time.sleep(0.1)  # coarse: polling the process tree costs CPU of its own
    wall = time.perf_counter() - t0
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = cpu.ru_utime + cpu.ru_stime - cpu0
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"analyze failed: {err}")
    return {"wall_s": wall, "cpu_s": cpu_s, "peak_rss_mb": peak / 2**20, "peak_rss_one_process_mb":
            peak_one / 2**20, "decision": err.strip().split(":")[0]}


PARSE_ONLY = """
import sys, polars as pl
from router.analysis.frames import record_schema
from router.analysis.reader import iter_chunks
schema = record_schema(numeric=True, fields=False)
print(sum(pl.read_ndjson(c, schema=schema).height for c in iter_chunks(sys.argv[1])))
"""


def parse_floor(pairs: Path) -> float:
    """Wall seconds of a process that only starts, imports polars and parses the records file
    (the floor of any polars-based reader; measured in the same run as the analyses, so the
    ratio to it survives the machine's speed changing between runs)."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", PARSE_ONLY, str(pairs)], cwd=ROOT, check=True,
                   capture_output=True)  # fmt: skip
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--units", type=int, default=200_000)
    ap.add_argument("--workers", type=int, default=2, help="parse threads of the second run")
    ap.add_argument("--json", help="write results here")
    ap.add_argument("--skip-redis", action="store_true")
    ap.add_argument(
        "--ab",
        type=Path,
        metavar="BASELINE_DIR",
        help="A/B mode: JSONL analyses of this tree and of the checkout in BASELINE_DIR "
        "alternated over --rounds on the same data; medians and their ratio",
    )
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "records": a.records,
    }
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        t = time.perf_counter()
        pairs, outs, n_out = write_data(tmp, a.records, a.units)
        results["outcomes"] = n_out
        print(f"generated {a.records} records, {n_out} outcomes in "
              f"{time.perf_counter() - t:.1f} s ({pairs.stat().st_size / 2**20:.0f} MB JSONL)")
        if a.ab is not None:
            return ab_runs(a, pairs, outs, results)
        floor = min(parse_floor(pairs) for _ in range(2))
        results["parse_only_s"] = floor
        print(f"parse-only floor (start, import polars, parse the records): {floor:.2f} s")
        rows = []
        for workers in sorted({1, a.workers}):
            r = run_analyze(["--pairs", str(pairs), "--outcomes", str(outs),
                             "--workers", str(workers)])
            r |= {"source": f"jsonl, --workers {workers}",
                  "records_per_s": a.records / r["wall_s"], "vs_parse_only": r["wall_s"] / floor}
            rows.append(r)
        if not a.skip_redis:
            rp = RedisProcess(tmp / "redis", appendonly=False, prefer_path=True).start()
            try:
                t = time.perf_counter()
                load_redis(rp.url, pairs, outs)
                print(f"loaded Redis in {time.perf_counter() - t:.1f} s")
                for workers in sorted({1, a.workers}):
                    r = run_analyze(["--redis", rp.url, "--workers", str(workers)])
                    r |= {"source": f"redis, --workers {workers}",
                          "records_per_s": a.records / r["wall_s"]}  # fmt: skip
                    rows.append(r)
            finally:
                rp.stop()
        results["runs"] = rows
    print(f"\n{'source':<22} {'records/s':>12} {'wall s':>8} {'x parse-only':>13} "
          f"{'peak RSS MB':>12}")
    for r in rows:
        ratio = f"{r['vs_parse_only']:.2f}" if "vs_parse_only" in r else "–"
        print(f"{r['source']:<22} {r['records_per_s']:>12,.0f} {r['wall_s']:>8.1f} "
              f"{ratio:>13} {r['peak_rss_mb']:>12.0f}")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))
    return 0


def ab_runs(a: argparse.Namespace, pairs: Path, outs: Path, results: dict[str, Any]) -> int:
    """This tree against a baseline checkout, alternating (ABBA...) on the same JSONL data."""
    import statistics

    base = a.ab.resolve()
    walls: dict[str, list[float]] = {"this": [], "base": []}
    cpus: dict[str, list[float]] = {"this": [], "base": []}
    argv = ["--pairs", str(pairs), "--outcomes", str(outs), "--workers", str(a.workers)]
    for rnd in range(a.rounds):
        order = [("this", ROOT), ("base", base)]
        for name, tree in order if rnd % 2 == 0 else order[::-1]:
            r = run_analyze(argv, tree)
            walls[name].append(r["wall_s"])
            cpus[name].append(r["cpu_s"])
            print(f"  round {rnd + 1} {name}: {a.records / r['wall_s']:,.0f} records/s "
                  f"({r['wall_s']:.1f} s wall, {r['cpu_s']:.1f} s CPU, peak RSS "
                  f"{r['peak_rss_mb']:.0f} MB)")  # fmt: skip
    med = {k: statistics.median(v) for k, v in walls.items()}
    ratio = med["base"] / med["this"]
    # the two runs of a round saw about the same machine: their ratio is the steadier figure
    paired = statistics.median(b / t for b, t in zip(walls["base"], walls["this"], strict=True))
    cpu_ratio = statistics.median(t / b for b, t in zip(cpus["base"], cpus["this"], strict=True))
    print(f"median: this {a.records / med['this']:,.0f} records/s, baseline "
          f"{a.records / med['base']:,.0f} records/s: throughput ratio {ratio:.3f}; "
          f"median of the per-round ratios {paired:.3f}; CPU seconds this / baseline (median of "
          f"the per-round ratios) {cpu_ratio:.3f}")
    results["ab"] = {"baseline": str(base), "walls_s": walls, "median_s": med,
                     "throughput_ratio": ratio, "paired_ratio": paired, "cpu_s": cpus,
                     "cpu_ratio": cpu_ratio}  # fmt: skip
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
