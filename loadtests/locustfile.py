"""Locust load test of shadow-router against SLOs (loadtests/slo.yaml).

Point it at a running router::

    locust -f loadtests/locustfile.py --headless -u 40 -r 40 -t 60s --host http://127.0.0.1:8080

or let it start the whole stack for a scenario (two demo model servers and `router serve`)::

    locust -f loadtests/locustfile.py --headless -u 40 -r 40 -t 60s --scenario mirror-slow

Distributed (one generator saturates a core at about 1,200 req/s): ``--master`` with the
options above (``--scenario`` only there: the master starts the stack and its workers load the
host it tells them) and ``--expect-workers N``; each worker ``--worker --master-host HOST``.
The master checks the SLOs over all workers' requests and sets the exit code; workers exit 0.

Scenarios: ``pass-through`` (split 0, mirror 0), ``split`` (50%), ``mirror`` (100%),
``mirror-slow`` (mirror 100% to a challenger that answers in 1.5 s), ``mirror-dead`` (mirror
100% to a challenger that refuses connections). Payloads carry Zipf-distributed user ids (a few
heavy users, a long tail) and four features. At the end the run is checked against the SLOs of
``--slo-file`` (default ``loadtests/slo.yaml``); a breach sets a non-zero exit code and prints
which SLO and by how much.
"""

from __future__ import annotations

import atexit
import bisect
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml
from locust import HttpUser, between, events, task

from router.netutil import free_port, wait_port

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SCENARIOS = {
    "pass-through": {"split": 0.0, "mirror": 0.0, "challenger": "ok"},
    "split": {"split": 0.5, "mirror": 0.0, "challenger": "ok"},
    "mirror": {"split": 0.0, "mirror": 1.0, "challenger": "ok"},
    "mirror-slow": {"split": 0.0, "mirror": 1.0, "challenger": "slow"},
    "mirror-dead": {"split": 0.0, "mirror": 1.0, "challenger": "dead"},
}
_procs: list[subprocess.Popen[bytes]] = []
_tmp_dirs: list[Path] = []


def _stop_stack() -> None:
    for p in reversed(_procs):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in _procs:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
    _procs.clear()
    for d in _tmp_dirs:
        shutil.rmtree(d, ignore_errors=True)
    _tmp_dirs.clear()


def start_stack(scenario: str, tmp: Path) -> str:
    """Start two model servers and a router for ``scenario``; return the router URL."""
    spec = SCENARIOS[scenario]
    py = sys.executable
    champ, chall, router = free_port(), free_port(), free_port()
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "cwd": ROOT}
    _procs.append(
        subprocess.Popen(
            [
                py,
                "-m",
                "router.demo.models",
                "--version",
                "champ",
                "--host",
                "127.0.0.1",
                "--port",
                str(champ),
            ],
            **quiet,
        )
    )  # type: ignore[call-overload]
    if spec["challenger"] != "dead":
        latency = "1500" if spec["challenger"] == "slow" else "0"
        _procs.append(
            subprocess.Popen(
                [
                    py,
                    "-m",
                    "router.demo.models",
                    "--version",
                    "chall",
                    "--weights",
                    "challenger",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(chall),
                    "--latency-ms",
                    latency,
                ],
                **quiet,
            )
        )  # type: ignore[call-overload]
    cfg = {
        "listen": f"127.0.0.1:{router}",
        "champion": {"url": f"http://127.0.0.1:{champ}", "version": "champ"},
        "challenger": {"url": f"http://127.0.0.1:{chall}", "version": "chall", "timeout": 3.0},
        "experiment": {
            "name": f"load-{scenario}",
            "salt": "load",
            "split": spec["split"],
            "mirror": spec["mirror"],
            "unit": {"header": "X-User-Id", "json_path": "user.id"},
        },
        "capture": {"redis": "embedded", "data_dir": str(tmp / "data")},
        "guard": {"enabled": False},
    }
    path = tmp / "router.yaml"
    path.write_text(yaml.safe_dump(cfg))
    log = open(tmp / "router.log", "wb")  # noqa: SIM115
    _procs.append(
        subprocess.Popen(
            [
                py,
                "-m",
                "router",
                "serve",
                "-c",
                str(path),
                "--workers",
                "1",
                "--log-level",
                "WARNING",
            ],
            stdout=log,
            stderr=log,
            cwd=ROOT,
        )
    )
    for port in (champ, router) + ((chall,) if spec["challenger"] != "dead" else ()):
        wait_port(port)
    return f"http://127.0.0.1:{router}"


class Zipf:
    def __init__(self, n: int = 5000, s: float = 1.1) -> None:
        w = [1.0 / k**s for k in range(1, n + 1)]
        total = sum(w)
        acc, self.cum = 0.0, []
        for x in w:
            acc += x / total
            self.cum.append(acc)

    def draw(self, rng: random.Random) -> int:
        return min(bisect.bisect_left(self.cum, rng.random()), len(self.cum) - 1)


ZIPF = Zipf()
COUNTRIES = ("de", "fr", "us", "br", "in")


@events.init_command_line_parser.add_listener
def _args(parser: Any) -> None:
    parser.add_argument(
        "--scenario",
        choices=sorted(SCENARIOS),
        default=None,
        help="start models + router for this scenario (else use --host)",
    )
    parser.add_argument("--slo-file", default=str(HERE / "slo.yaml"))


@events.init.add_listener
def _init(environment: Any, **_: Any) -> None:
    opts = environment.parsed_options
    if opts is None or not getattr(opts, "scenario", None):
        return
    tmp = Path(tempfile.mkdtemp(prefix="locust-router-"))
    _tmp_dirs.append(tmp)
    environment.host = start_stack(opts.scenario, tmp)
    opts.host = environment.host
    atexit.register(_stop_stack)
    print(f"scenario {opts.scenario}: router at {environment.host}", flush=True)


def check_slos(stats: Any, slo: dict[str, float], duration_s: float) -> list[str]:
    """Breach messages (empty when every SLO holds)."""
    total = stats.total
    breaches = []
    if total.num_requests == 0:
        return ["no requests were made"]
    p95 = total.get_response_time_percentile(0.95)
    p99 = total.get_response_time_percentile(0.99)
    err = total.num_failures / total.num_requests
    rps = total.num_requests / max(duration_s, 1e-9)
    checks = (
        ("p95 latency", p95, slo.get("p95_ms"), "ms", True),
        ("p99 latency", p99, slo.get("p99_ms"), "ms", True),
        ("error rate", err, slo.get("max_error_rate"), "", True),
        ("throughput", rps, slo.get("min_rps"), "req/s", False),
    )
    for name, value, limit, unit, upper in checks:
        if limit is None:
            continue
        if upper and value > limit:
            breaches.append(
                f"{name} {value:.4g} {unit} > SLO {limit} {unit} (by {value - limit:.4g})"
            )
        elif not upper and value < limit:
            breaches.append(
                f"{name} {value:.4g} {unit} < SLO {limit} {unit} (short by {limit - value:.4g})"
            )
    return breaches


@events.quitting.add_listener
def _check(environment: Any, **_: Any) -> None:
    from locust.runners import WorkerRunner

    if isinstance(environment.runner, WorkerRunner):
        # a worker's stats go to the master, which checks the SLOs of the whole run
        return
    opts = environment.parsed_options
    slo_file = Path(getattr(opts, "slo_file", HERE / "slo.yaml"))
    doc = yaml.safe_load(slo_file.read_text())
    slo = dict(doc.get("default", {}))
    scenario = getattr(opts, "scenario", None)
    slo.update((doc.get("scenarios") or {}).get(scenario, {}) if scenario else {})
    stats = environment.runner.stats
    duration = max(stats.last_request_timestamp or 0, stats.start_time) - stats.start_time
    breaches = check_slos(stats, slo, duration)
    if breaches:
        print("SLO BREACHED:", *breaches, sep="\n  ", flush=True)
        environment.process_exit_code = 1
    else:
        print(f"all SLOs met ({', '.join(f'{k}={v}' for k, v in slo.items())})", flush=True)
    _stop_stack()


class ModelClient(HttpUser):
    wait_time = between(0.005, 0.02)

    def on_start(self) -> None:
        self.rng = random.Random(os.getpid() ^ id(self))

    @task
    def predict(self) -> None:
        user = ZIPF.draw(self.rng)
        payload = {
            "user": {"id": f"user-{user}", "country": COUNTRIES[user % 5]},
            "features": [round(self.rng.gauss(0, 1), 3) for _ in range(4)],
        }
        with self.client.post(
            "/predict",
            json=payload,
            name="/predict",
            headers={"X-User-Id": f"user-{user}"},
            catch_response=True,
        ) as r:
            if r.status_code != 200:
                r.failure(f"status {r.status_code}")
            elif "X-Router-Variant" not in r.headers:
                r.failure("missing X-Router-Variant")
