"""Proxy overhead benchmark: the router against direct calls, a naive aiohttp proxy and nginx.

Runs everything in one go on this machine so the ratios are measured under the same noise:

* near-free upstream stubs (``stub_upstream.py``), a throwaway redis-server for capture;
* A/B/n (issue 16), in ``--ab`` mode: ``router-abn4`` (50% split over four challengers) against
  ``router-split50`` (one challenger at 50%), and the in-process cost of assignment with one
  and with four challengers;
* scenarios: ``direct`` (no proxy), ``router`` pass-through (capture on), ``router-split50``,
  ``router-mirror100`` (shadow to a second stub, capture on), ``naive`` and ``naive-mirror100``
  (``naive_proxy.py``), ``nginx`` and ``nginx-mirror100`` when nginx is installed;
* saturation: ``wrk -t1 -c64`` with the proxy pinned to core 0 and wrk + upstreams on core 1,
  reporting requests/s, p50/p99 latency and **proxy CPU µs per request** (utime+stime of the
  proxy's processes from /proc, divided by the requests served);
* fixed rate: an open-loop client at ``--rate`` requests/s (default 1000) against stubs that
  answer after ``--model-ms`` (default 2 ms, a stand-in for inference), reporting the median and
  p99 latency each proxy adds over direct calls (latency from the scheduled send time, so
  coordinated omission does not hide stalls).

Usage::

    python benchmarks/proxy_overhead.py                 # ~2 minutes
    python benchmarks/proxy_overhead.py --duration 10 --json results.json

wrk and nginx come from Debian's packages (``apt-get install wrk nginx-light``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from router.capture.redisproc import RedisProcess  # noqa: E402
from router.netutil import free_port, wait_port  # noqa: E402

LUA = """
local counter = 0
request = function()
  counter = counter + 1
  return wrk.format("POST", "/predict",
    {["Content-Type"] = "application/json", ["X-User-Id"] = "user-" .. (counter % 20000)},
    '{"user": {"id": "u"}, "features": [0.1, 0.2, 0.3, 0.4]}')
end
"""
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


def process_tree(pid: int) -> list[int]:
    out = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    for c in children:
        out += process_tree(int(c))
    return out


def pinned(core: str, cmd: list[str]) -> list[str]:
    return ["taskset", "-c", core, *cmd] if shutil.which("taskset") else cmd


@contextmanager
def running(
    cmd: list[str], port: int, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=cwd,
        start_new_session=True,
    )  # fmt: skip
    try:
        wait_port(port)
        time.sleep(0.3)
        yield proc
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@dataclass
class Result:
    scenario: str
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_request: float | None
    requests: int


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    if not m:
        return float("nan")
    v, unit = float(m.group(1)), m.group(2)
    return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v


def run_wrk(port: int, duration: float, lua: Path, conns: int) -> tuple[float, float, float, int]:
    secs = f"-d{max(1, round(duration))}s"
    cmd = pinned("1", ["wrk", "-t1", f"-c{conns}", secs, "--latency", "-s", str(lua),
                       f"http://127.0.0.1:{port}/predict"])  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    n = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        raise RuntimeError(f"{non2xx.group(1)} failed responses:\n{out}")
    return rps, p50, p99, n


async def fixed_rate(port: int, rate: float, seconds: float) -> tuple[float, float]:
    """Open-loop load at ``rate`` req/s; (p50_ms, p99_ms) measured from scheduled send times."""
    from router.sidecar.upstream import UpstreamPool

    pool = UpstreamPool("127.0.0.1", port, pool_size=128, timeout=5.0)
    body = b'{"user": {"id": "u"}, "features": [0.1, 0.2, 0.3, 0.4]}'
    lat: list[float] = []
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.2
    n = int(rate * seconds)

    async def one(i: int) -> None:
        scheduled = start + i / rate
        await asyncio.sleep(max(0.0, scheduled - loop.time()))
        headers = [(b"Host", b"bench"), (b"Content-Type", b"application/json"),
                   (b"X-User-Id", f"user-{i % 20000}".encode())]  # fmt: skip
        r = await pool.request(b"POST", b"/predict", headers, body)
        assert r.status == 200
        lat.append((loop.time() - scheduled) * 1000.0)

    await asyncio.gather(*(one(i) for i in range(n)))
    await pool.close()
    lat.sort()
    warm = lat[len(lat) // 10 :] if len(lat) > 100 else lat
    warm.sort()
    return warm[len(warm) // 2], warm[int(len(warm) * 0.99)]


def router_cmd(tmp: Path, port: int, champ: int, chall: int, redis_url: str, split: float,
               mirror: float, challengers: int = 1, **experiment: object) -> list[str]:  # fmt: skip
    cfg: dict[str, Any] = {
        "listen": f"127.0.0.1:{port}",
        "champion": {"url": f"http://127.0.0.1:{champ}", "version": "a", "pool_size": 128},
        "challenger": {"url": f"http://127.0.0.1:{chall}", "version": "b", "pool_size": 128},
        "experiment": {"name": "bench", "salt": "bench", "split": split, "mirror": mirror,
                       "unit": {"header": "X-User-Id"}, **experiment},
        "capture": {"redis": redis_url, "stream_maxlen": 200000},
        "limits": {"shadow_queue": 10000, "capture_queue": 100000},
        "guard": {"enabled": False},
    }  # fmt: skip
    if challengers > 1:  # A/B/n: the same stub behind every challenger, the split shared out
        del cfg["challenger"]
        cfg["experiment"].pop("split")
        cfg["experiment"].pop("mirror")
        cfg["challengers"] = [
            {"name": f"c{i}", "url": f"http://127.0.0.1:{chall}", "version": f"b{i}",
             "pool_size": 128, "split": split / challengers, "mirror": mirror}
            for i in range(challengers)
        ]  # fmt: skip
    path = tmp / f"router-{port}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return [sys.executable, "-m", "router", "serve", "-c", str(path), "--log-level", "WARNING"]


def assignment_cost(challengers: int, n: int = 200_000) -> float:
    """µs per request of the hot path's assignment in process: the unit's bucket, its variant
    (one table lookup) and the mirror routes of the served variant (every challenger mirrors
    10% here, so the champion's requests check one route per challenger)."""
    from router.config import parse_config
    from router.sidecar.app import RouterApp

    cfg = parse_config({
        "champion": {"url": "http://127.0.0.1:9", "version": "a"},
        "challengers": [{"name": f"c{i}", "url": "http://127.0.0.1:9", "version": f"b{i}",
                         "split": 0.5 / challengers, "mirror": 0.1} for i in range(challengers)],
        "experiment": {"name": "bench", "salt": "bench"},
        "capture": {"enabled": False},
    })  # fmt: skip
    app = RouterApp(cfg, tempfile.mkdtemp(prefix="bench-assign-"), None)
    from router.sidecar.assign import bucket

    units = [f"user-{i}" for i in range(n)]
    salt, msalt = app.salt, app.mirror_salt
    t0 = time.perf_counter()
    hits = 0
    for unit in units:
        idx = app.owner[bucket(salt, unit)]
        _variant = app.variants[idx]
        routes = app.mirror_routes[idx]
        if app.mirror_any and routes:
            mb = bucket(msalt, unit)
            for r in routes:
                if mb < r.raw and mb < r.effective:
                    hits += 1
    return (time.perf_counter() - t0) / n * 1e6


def nginx_conf(tmp: Path, port: int, champ: int, chall: int, mirror: bool) -> Path:
    d = tmp / f"nginx-{port}"
    d.mkdir()
    mirror_cfg = "mirror /__mirror; mirror_request_body on;" if mirror else ""
    conf = f"""
worker_processes 1; daemon off; pid {d}/nginx.pid; error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  upstream champ {{ server 127.0.0.1:{champ}; keepalive 128; }}
  upstream chall {{ server 127.0.0.1:{chall}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{ {mirror_cfg} proxy_pass http://champ; proxy_http_version 1.1;
                 proxy_set_header Connection ""; }}
    location = /__mirror {{ internal; proxy_pass http://chall$request_uri;
                 proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
}}
"""
    path = d / "nginx.conf"
    path.write_text(conf)
    return path


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--duration", type=float, default=6.0, help="seconds per wrk run")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--rate-seconds", type=float, default=6.0)
    ap.add_argument("--model-ms", type=float, default=2.0)
    ap.add_argument("--only", nargs="*", help="scenario names to run")
    ap.add_argument("--json", type=Path, help="write results here")
    ap.add_argument(
        "--ab",
        type=Path,
        metavar="BASELINE_DIR",
        help="A/B mode: the router scenarios only, this tree against the checkout in "
        "BASELINE_DIR (e.g. a detached worktree of main), interleaved over --rounds",
    )
    ap.add_argument("--rounds", type=int, default=3, help="A/B rounds (medians reported)")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        print("wrk is required: apt-get install wrk", file=sys.stderr)
        return 2
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})  # the fixed-rate client shares core 1 with wrk and stubs
    tmp = Path(tempfile.mkdtemp(prefix="bench-proxy-"))
    lua = tmp / "post.lua"
    lua.write_text(LUA)
    have_nginx = shutil.which("nginx") is not None
    py = sys.executable
    results: list[Result] = []
    fixed: dict[str, tuple[float, float]] = {}

    redis = RedisProcess(tmp / "redis", appendonly=False, prefer_path=True).start()
    champ, chall = free_port(), free_port()
    champ_slow, chall_slow = free_port(), free_port()
    stubs = [
        (pinned("1", [py, str(HERE / "stub_upstream.py"), str(p), str(d)]), p)
        for p, d in (
            (champ, 0),
            (chall, 0),
            (champ_slow, args.model_ms),
            (chall_slow, args.model_ms),
        )
    ]

    def scenarios(c: int, h: int) -> list[tuple[str, list[str] | None, int]]:
        out: list[tuple[str, list[str] | None, int]] = [("direct", None, c)]
        for name, split, mirror in (("router", 0.0, 0.0), ("router-split50", 0.5, 0.0),
                                    ("router-mirror100", 0.0, 1.0)):  # fmt: skip
            p = free_port()
            out.append((name, pinned("0", router_cmd(tmp, p, c, h, redis.url, split, mirror)), p))
        p = free_port()
        out.append(
            (
                "naive",
                pinned("0", [py, str(HERE / "naive_proxy.py"), str(p), f"http://127.0.0.1:{c}"]),
                p,
            )
        )
        p = free_port()
        out.append(("naive-mirror100", pinned("0", [py, str(HERE / "naive_proxy.py"), str(p),
                    f"http://127.0.0.1:{c}", f"http://127.0.0.1:{h}"]), p))  # fmt: skip
        if have_nginx:
            for name, mirror in (("nginx", False), ("nginx-mirror100", True)):
                p = free_port()
                conf = nginx_conf(tmp, p, c, h, mirror)
                out.append(
                    (name, pinned("0", ["nginx", "-p", str(conf.parent), "-c", str(conf)]), p)
                )
        return out

    procs = [
        subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for cmd, _ in stubs
    ]
    if args.ab is not None:
        try:
            for _, p in stubs:
                wait_port(p)
            return ab_main(args, tmp, lua, champ, chall, redis.url)
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait()
            redis.stop()
            shutil.rmtree(tmp, ignore_errors=True)
    try:
        for _, p in stubs:
            wait_port(p)
        wanted = set(args.only or [])
        secs = round(args.duration)
        print(f"saturation: wrk -t1 -c{args.connections} -d{secs}s, proxy on core 0")
        for name, cmd, port in scenarios(champ, chall):
            if wanted and name not in wanted:
                continue
            if cmd is None:
                rps, p50, p99, n = run_wrk(port, args.duration, lua, args.connections)
                results.append(Result(name, rps, p50, p99, None, n))
            else:
                with running(cmd, port) as proc:
                    run_wrk(port, 1.0, lua, args.connections)  # warm up
                    pids = process_tree(proc.pid)
                    before = cpu_seconds(pids)
                    rps, p50, p99, n = run_wrk(port, args.duration, lua, args.connections)
                    used = cpu_seconds(pids) - before
                    results.append(Result(name, rps, p50, p99, used / n * 1e6, n))
            r = results[-1]
            cpu = f"{r.cpu_us_per_request:7.1f}" if r.cpu_us_per_request else "      -"
            print(f"  {name:<17} {r.requests_per_s:9.0f} req/s  p50 {r.p50_ms:6.2f} ms  "
                  f"p99 {r.p99_ms:6.2f} ms  CPU {cpu} µs/req")  # fmt: skip
        print(f"fixed rate: {args.rate:.0f} req/s for {args.rate_seconds}s, model answers in "
              f"{args.model_ms} ms")  # fmt: skip
        for name, cmd, port in scenarios(champ_slow, chall_slow):
            if wanted and name not in wanted:
                continue
            if cmd is None:
                fixed[name] = asyncio.run(fixed_rate(port, args.rate, args.rate_seconds))
            else:
                with running(cmd, port):
                    asyncio.run(fixed_rate(port, args.rate, 1.0))
                    fixed[name] = asyncio.run(fixed_rate(port, args.rate, args.rate_seconds))
            p50, p99 = fixed[name]
            base = fixed.get("direct", (p50, p99))
            print(f"  {name:<17} p50 {p50:6.2f} ms (+{p50 - base[0]:5.2f})  "
                  f"p99 {p99:6.2f} ms (+{p99 - base[1]:5.2f})")  # fmt: skip
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        redis.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    by = {r.scenario: r for r in results}
    print("\nratios (same run):")
    for name in ("router", "router-split50", "router-mirror100"):
        r = by.get(name)
        if not r:
            continue
        parts = []
        if "direct" in by:
            parts.append(f"throughput {r.requests_per_s / by['direct'].requests_per_s:.2f}x direct")
        naive = by.get("naive-mirror100" if "mirror" in name else "naive")
        if naive and naive.cpu_us_per_request and r.cpu_us_per_request:
            parts.append(f"CPU/request {naive.cpu_us_per_request / r.cpu_us_per_request:.1f}x "
                         f"leaner than {naive.scenario}")  # fmt: skip
        ng = by.get("nginx-mirror100" if "mirror" in name else "nginx")
        if ng and ng.cpu_us_per_request and r.cpu_us_per_request:
            parts.append(f"{r.cpu_us_per_request / ng.cpu_us_per_request:.1f}x nginx's CPU")
        print(f"  {name:<17} " + "; ".join(parts))
    if args.json:
        args.json.write_text(json.dumps({
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "python": platform.python_version()},
            "saturation": [asdict(r) for r in results],
            "fixed_rate": {k: {"p50_ms": v[0], "p99_ms": v[1]} for k, v in fixed.items()},
            "args": {k: str(v) for k, v in vars(args).items()},
        }, indent=2))  # fmt: skip
    return 0


AB_SCENARIOS: list[tuple[str, float, float, dict[str, object], bool]] = [
    # name, split, mirror, extra experiment keys, also on the baseline
    ("router", 0.0, 0.0, {}, True),
    ("router-mirror100", 0.0, 1.0, {}, True),
    ("router-noise100", 0.0, 0.0, {"noise_floor": 1.0}, False),
    ("router-mirror100-noise100", 0.0, 1.0, {"noise_floor": 1.0}, False),
    # A/B/n (issue 16): four challengers sharing a 50% split, against one challenger at 50%
    ("router-split50", 0.5, 0.0, {}, False),
    ("router-abn4", 0.5, 0.0, {"challengers": 4}, False),
]


def ab_main(args: argparse.Namespace, tmp: Path, lua: Path, champ: int, chall: int,
            redis_url: str) -> int:  # fmt: skip
    """This tree's router against a baseline checkout's, saturated by wrk, the two runs of a
    scenario back to back in every round (so drifting load on a shared machine hits both):
    proxy CPU µs per request and requests/s, medians over the rounds, and their ratios."""
    import statistics

    base = args.ab.resolve()
    env_base = dict(os.environ, PYTHONPATH=str(base))
    runs: dict[str, list[Result]] = {}
    for rnd in range(args.rounds):
        for name, split, mirror, extra, on_base in AB_SCENARIOS:
            trees = [("", ROOT, None)] + ([("@base", base, env_base)] if on_base else [])
            if rnd % 2:
                trees.reverse()
            for suffix, cwd, env in trees:
                p = free_port()
                cmd = pinned("0", router_cmd(tmp, p, champ, chall, redis_url, split, mirror,
                                             **extra))  # fmt: skip
                with running(cmd, p, env=env, cwd=cwd) as proc:
                    run_wrk(p, 1.0, lua, args.connections)  # warm up
                    pids = process_tree(proc.pid)
                    before = cpu_seconds(pids)
                    rps, p50, p99, n = run_wrk(p, args.duration, lua, args.connections)
                    used = cpu_seconds(pids) - before
                r = Result(name + suffix, rps, p50, p99, used / n * 1e6, n)
                runs.setdefault(r.scenario, []).append(r)
                print(f"  round {rnd + 1} {r.scenario:<28} {rps:8.0f} req/s  "
                      f"CPU {r.cpu_us_per_request:6.1f} µs/req")  # fmt: skip
    med = {
        k: {
            "requests_per_s": statistics.median(r.requests_per_s for r in v),
            "cpu_us_per_request": statistics.median(r.cpu_us_per_request or 0.0 for r in v),
            "p99_ms": statistics.median(r.p99_ms for r in v),
        }
        for k, v in runs.items()
    }
    print(f"\nmedians over {args.rounds} rounds (this tree vs {base}):")
    for k, v in med.items():
        line = f"  {k:<28} {v['requests_per_s']:8.0f} req/s  CPU {v['cpu_us_per_request']:6.1f}"
        b = med.get(k + "@base")
        if b:
            cpu_ratio = v["cpu_us_per_request"] / b["cpu_us_per_request"]
            rps_ratio = v["requests_per_s"] / b["requests_per_s"]
            line += f"  CPU ratio {cpu_ratio:.3f}, throughput ratio {rps_ratio:.3f}"
        print(line)
    one, four = runs.get("router-split50"), runs.get("router-abn4")
    if one and four:
        deltas = [(b.cpu_us_per_request or 0.0) - (a.cpu_us_per_request or 0.0)
                  for a, b in zip(one, four, strict=False)]  # fmt: skip
        print(f"  four challengers: {statistics.median(deltas):+.1f} µs CPU/request against one "
              f"(split 50% both; per round {', '.join(f'{d:+.1f}' for d in deltas)})")  # fmt: skip
    a1, a4 = assignment_cost(1), assignment_cost(4)
    print(f"  assignment in process: {a1:.2f} µs with one challenger, {a4:.2f} µs with four "
          f"({a4 - a1:+.2f} µs)")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({
            "ab": {"baseline": str(base), "rounds": args.rounds, "medians": med,
                   "runs": {k: [asdict(r) for r in v] for k, v in runs.items()}},
            "args": {k: str(v) for k, v in vars(args).items()},
        }, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
