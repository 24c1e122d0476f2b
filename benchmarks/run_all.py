"""Run every benchmark in one go and write a results table (Markdown and JSON).

    python benchmarks/run_all.py                       # ~6 minutes on a 2-core machine
    python benchmarks/run_all.py --quick               # shorter runs, smaller data sets
    python benchmarks/run_all.py --only proxy,analyzer --out benchmarks/results  # keeps the rest

Each benchmark runs as its own process (``proxy_overhead.py``, ``capture_throughput.py``,
``analyzer_throughput.py``) and writes JSON; this script adds the machine's description and
renders ``results.md`` (the table README.md shows) and ``results.json``. A benchmark that fails
or is missing is reported as such in the table, not silently left out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu": cpu, "memory_gib": mem,
            "platform": platform.platform(), "python": platform.python_version(),
            "wrk": shutil.which("wrk") is not None, "nginx": shutil.which("nginx") is not None,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def run(name: str, argv: list[str], out: Path) -> dict[str, Any]:
    script = HERE / argv[0]
    if not script.exists():
        return {"status": "missing", "detail": f"{argv[0]} not found"}
    t = time.perf_counter()
    p = subprocess.run([sys.executable, str(script), *argv[1:], "--json", str(out)],
                       capture_output=True, text=True, cwd=HERE.parent)
    (out.parent / f"{name}.log").write_text(p.stdout + p.stderr)
    if p.returncode != 0 or not out.exists():
        tail = (p.stdout + p.stderr).strip().splitlines()[-3:]
        return {"status": "failed", "detail": " | ".join(tail)}
    data: dict[str, Any] = json.loads(out.read_text())
    data["status"] = "ok"
    data["seconds"] = round(time.perf_counter() - t, 1)
    return data


def _fmt(x: Any, spec: str = ",.0f") -> str:
    return "–" if x is None else format(x, spec)


def render(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [f"Machine: {m['cpus']} CPUs ({m['cpu']}), {m['memory_gib']} GiB, Python "
             f"{m['python']}, {m['platform']}; {m['date']}.", ""]
    px = results.get("proxy", {})
    if px.get("status") == "ok":
        by = {r["scenario"]: r for r in px["saturation"]}
        fixed = px.get("fixed_rate", {})
        direct = fixed.get("direct", {})
        lines += ["**Proxy** (`proxy_overhead.py`): saturation with wrk (proxy pinned to one "
                  "core), added latency at a fixed 1,000 req/s", "",
                  "| scenario | req/s | CPU µs/req | vs naive | vs nginx | p50 added | "
                  "p99 added |", "|---|---:|---:|---:|---:|---:|---:|"]
        for name, r in by.items():
            mirror = "mirror" in name
            naive = by.get("naive-mirror100" if mirror else "naive")
            ng = by.get("nginx-mirror100" if mirror else "nginx")
            cpu = r.get("cpu_us_per_request")
            vs_naive = (f"{naive['cpu_us_per_request'] / cpu:.1f}x leaner"
                        if naive and cpu and naive.get("cpu_us_per_request") and
                        name.startswith("router") else "")
            vs_ng = (f"{cpu / ng['cpu_us_per_request']:.1f}x" if ng and cpu and
                     ng.get("cpu_us_per_request") and name.startswith("router") else "")
            f = fixed.get(name, {})
            add50 = (f"+{f['p50_ms'] - direct['p50_ms']:.2f} ms" if f and direct and
                     name != "direct" else "")
            add99 = (f"+{f['p99_ms'] - direct['p99_ms']:.2f} ms" if f and direct and
                     name != "direct" else "")
            lines.append(f"| {name} | {_fmt(r['requests_per_s'])} | "
                         f"{_fmt(cpu, '.0f') if cpu else '–'} | {vs_naive} | {vs_ng} | "
                         f"{add50} | {add99} |")
        lines.append("")
    else:
        lines += [f"**Proxy**: {px.get('status', 'not run')} {px.get('detail', '')}", ""]
    sr = results.get("stream", {})
    if sr.get("status") == "ok":
        t, s = sr["ttfb"], sr["streams"]
        lines += ["**Streaming** (`stream_overhead.py`): server-sent events through the router "
                  "(pinned to one core) against the direct call", "",
                  "| measure | direct | router | target |", "|---|---:|---:|---:|",
                  f"| time to first byte, p50 ({t['requests']} streams) | "
                  f"{t['direct_p50_ms']:.2f} ms | {t['router_p50_ms']:.2f} ms "
                  f"(+{t['added_p50_ms']:.2f}) | +0.5 ms |",
                  f"| the same, router in the client's process | "
                  f"{sr['ttfb_in_process']['direct_p50_ms']:.2f} ms | "
                  f"{sr['ttfb_in_process']['router_p50_ms']:.2f} ms "
                  f"(+{sr['ttfb_in_process']['added_p50_ms']:.2f}) | +0.5 ms |",
                  f"| first event's transit from the upstream's write, p50 | "
                  f"{t['first_event_transit_direct_p50_ms']:.3f} ms | "
                  f"{t['first_event_transit_router_p50_ms']:.3f} ms | |",
                  f"| CPU per event ({s['streams']} streams x {s['events_per_stream']} events) | "
                  f"– | {s['router_cpu_us_per_event']:.2f} µs | 10 µs |",
                  f"| memory per stream (RSS over idle) | – | "
                  f"{s['router_rss_over_idle_per_stream_kib']:.0f} KiB | bounded |"]
        if "nginx_streams" in sr:  # the reference, same run
            n = sr["nginx_streams"]
            lines += [f"| nginx (`proxy_buffering off`): time to first byte, p50 | "
                      f"{t['direct_p50_ms']:.2f} ms | {t['nginx_p50_ms']:.2f} ms "
                      f"(+{t['nginx_added_p50_ms']:.2f}) | |",
                      f"| nginx worker CPU per event | – | "
                      f"{n['router_cpu_us_per_event']:.2f} µs | |"]
        lines.append("")
    else:
        lines += [f"**Streaming**: {sr.get('status', 'not run')} {sr.get('detail', '')}", ""]
    cap = results.get("capture", {})
    if cap.get("status") == "ok":
        lines += [f"**Capture** (`capture_throughput.py`, {cap.get('records', 0):,} records, "
                  f"batch {cap.get('batch_size')})", "", "| path | records/s |", "|---|---:|"]
        labels = {
            "writer_to_redis_records_per_s": "CaptureWriter → Redis (end to end)",
            "pipelined_xadd_records_per_s": "plain pipelined XADD (no dedupe)",
            "lua_exactly_once_records_per_s": "exactly-once Lua batch script",
            "writer_to_spool_records_per_s": "CaptureWriter → spool (Redis down)",
            "spool_replay_records_per_s": "spool → Redis replay",
        }
        for k, label in labels.items():
            if k in cap:
                lines.append(f"| {label} | {_fmt(cap[k])} |")
        lines.append("")
    else:
        lines += [f"**Capture**: {cap.get('status', 'not run')} {cap.get('detail', '')}", ""]
    an = results.get("analyzer", {})
    if an.get("status") == "ok":
        floor = an.get("parse_only_s")
        lines += [f"**Analyzer** (`analyzer_throughput.py`, {an['records']:,} records, "
                  f"{an['outcomes']:,} outcomes, `router analyze` end to end"
                  + (f"; parsing the file alone with polars took {floor:.2f} s" if floor else "")
                  + ")", "",
                  "| source | records/s | wall s | × parse-only | peak RSS |",
                  "|---|---:|---:|---:|---:|"]
        for r in an["runs"]:
            ratio = f"{r['vs_parse_only']:.2f}" if "vs_parse_only" in r else "–"
            lines.append(f"| {r['source']} | {_fmt(r['records_per_s'])} | {r['wall_s']:.1f} | "
                         f"{ratio} | {r['peak_rss_mb']:.0f} MB |")
        lines.append("")
    else:
        lines += [f"**Analyzer**: {an.get('status', 'not run')} {an.get('detail', '')}", ""]
    lines += _render_archive(results.get("archive", {}))
    fl = results.get("floor", {})
    if fl.get("status") == "ok":
        lines += [f"**Re-fold against a native floor** (`refold_floor.py`, {fl['records']:,} "
                  f"archived records; DuckDB, 2 threads, computing only the core aggregates): "
                  f"`router analyze` {fl['analyze_records_per_s']:,.0f} records/s, the floor "
                  f"{fl['floor_records_per_s']:,.0f}; analyze/floor wall "
                  f"{fl['wall_ratio_analyze_to_floor']:.2f}, CPU "
                  f"{fl['cpu_ratio_analyze_to_floor']:.2f}", ""]
    else:
        lines += [f"**Re-fold floor**: {fl.get('status', 'not run')} {fl.get('detail', '')}", ""]
    return "\n".join(lines)


def _render_archive(ar: dict[str, Any]) -> list[str]:
    if ar.get("status") != "ok":
        return [f"**Archive**: {ar.get('status', 'not run')} {ar.get('detail', '')}", ""]
    lines: list[str] = []
    arch = ar.get("archiver")
    if arch:
        shapes = [s for s in ("v1", "today") if s in arch] or ["runs"]
        for shape in shapes:
            rs = arch[shape]["runs"] if shape in arch else arch["runs"]
            runs = ", ".join(f"{r['records_per_s']:,.0f} ("
                             f"{r['cpu_s']:.1f} CPU-s)" for r in rs)
            lines += [f"**Archiver** (`archive_throughput.py`, {arch['records']:,} {shape} "
                      f"records from Redis into zstd Parquet, one process): records/s per run "
                      f"{runs}", ""]
    win = ar.get("window")
    if win:
        lines += [f"**Analysis over an archive** ({win['records']:,} records over {win['days']} "
                  f"days, {win['units']:,} units, `router analyze --archive` end to end)", "",
                  "| run | executor | records | records/s | wall s | peak RSS |",
                  "|---|---|---:|---:|---:|---:|"]
        for r in win["runs"]:
            lines.append(f"| {r['tag']} | {r['executor']} | {r['records']:,} | "
                         f"{r['records_per_s']:,.0f} | {r['wall_s']:.1f} | "
                         f"{r['peak_rss_mb']:.0f} MB |")
        if "rollup_build" in win:
            rb = win["rollup_build"]
            lines.append("")
            lines.append(f"`router rollup` over the window: {rb['wall_s']:.1f} s, "
                         f"{rb['bytes'] / 2**20:.0f} MiB of rollups (the `rollups` run merges "
                         "them: `analyze --archive --rollups`).")
        if "mb_per_million_records" in win:
            lines.append("")
            lines.append(f"Memory growth: {win['mb_per_million_records']:.0f} MB per million "
                         f"records, {win['mb_per_million_units']:.0f} MB per million units.")
        lines.append("")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--only", default="proxy,stream,capture,analyzer,archive,floor")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    wanted = set(a.only.split(","))
    previous = a.out / "results.json"
    # with --only, the other benchmarks' last results are kept (and say when they ran)
    results: dict[str, Any] = json.loads(previous.read_text()) if previous.exists() else {}
    results["machine"] = machine()
    plan = {
        "proxy": ["proxy_overhead.py", "--duration", "3" if a.quick else "6"],
        "stream": ["stream_overhead.py", *(["--streams", "50", "--events", "200"]
                                           if a.quick else [])],
        "capture": ["capture_throughput.py", *(["--records", "50000"] if a.quick else [])],
        "analyzer": ["analyzer_throughput.py", "--records", "200000" if a.quick else "1000000"],
        "archive": ["archive_throughput.py", "--records", "50000" if a.quick else "200000",
                    "--window-records", "500000" if a.quick else "5000000",
                    *(["--no-scale"] if a.quick else [])],
        "floor": ["refold_floor.py", "--records", "500000" if a.quick else "5000000",
                  "--rounds", "1" if a.quick else "2"],
    }
    for name, argv in plan.items():
        if name in wanted:
            print(f"running {name} ...", flush=True)
            results[name] = run(name, argv, a.out / f"{name}.json")
            print(f"  {results[name]['status']}", flush=True)
    (a.out / "results.json").write_text(json.dumps(results, indent=2))
    md = render(results)
    (a.out / "results.md").write_text(md + "\n")
    print("\n" + md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
