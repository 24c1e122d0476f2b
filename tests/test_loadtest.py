"""A short locust run of one scenario, so the locustfile cannot rot."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _locust(tmp_path: Path, slo: dict[str, object], scenario: str = "mirror-dead") -> subprocess.CompletedProcess[str]:  # noqa: E501
    slo_file = tmp_path / "slo.yaml"
    slo_file.write_text(yaml.safe_dump({"default": slo}))
    return subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtests" / "locustfile.py"),
         "--headless", "-u", "10", "-r", "10", "-t", "4s", "--scenario", scenario,
         "--slo-file", str(slo_file), "--only-summary", "--stop-timeout", "5"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )  # fmt: skip


def test_locust_scenario_meets_generous_slos(tmp_path: Path) -> None:
    proc = _locust(tmp_path, {"p99_ms": 2000, "max_error_rate": 0.0, "min_rps": 5})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "all SLOs met" in out


def test_locust_exits_nonzero_and_names_the_breached_slo(tmp_path: Path) -> None:
    proc = _locust(tmp_path, {"min_rps": 1_000_000}, scenario="pass-through")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "SLO BREACHED" in out and "throughput" in out and "short by" in out


def test_locust_distributed_master_checks_the_slos_of_all_workers(tmp_path: Path) -> None:
    from router.netutil import free_port

    port = str(free_port())
    slo_file = tmp_path / "slo.yaml"
    slo_file.write_text(yaml.safe_dump({"default": {"p99_ms": 2000, "min_rps": 5}}))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    base = [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtests" / "locustfile.py")]
    master = subprocess.Popen(
        [*base, "--headless", "--master", "--master-bind-host", "127.0.0.1",
         "--master-bind-port", port, "--expect-workers", "1", "-u", "10", "-r", "10", "-t", "4s",
         "--scenario", "pass-through", "--slo-file", str(slo_file), "--only-summary"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path, env=env,
    )  # fmt: skip
    worker = subprocess.Popen(
        [*base, "--worker", "--master-host", "127.0.0.1", "--master-port", port],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path, env=env,
    )  # fmt: skip
    try:
        m_out, _ = master.communicate(timeout=120)
        w_out, _ = worker.communicate(timeout=60)
    finally:
        for p in (master, worker):
            if p.poll() is None:
                p.kill()
    assert master.returncode == 0, m_out
    assert "all SLOs met" in m_out
    # the worker's requests were counted by the master; the worker itself judges nothing
    assert worker.returncode == 0, w_out
    assert "SLO" not in w_out
