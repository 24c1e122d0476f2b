"""`router demo` end to end (small): embedded Redis, models, router, both phases, report."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil


def test_demo_runs_the_whole_story_and_cleans_up(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    before = {p.pid for p in psutil.process_iter()}
    p = subprocess.run(
        [sys.executable, "-m", "router", "demo", "--shadow-requests", "400", "--split-requests",
         "1200", "--users", "300", "-o", str(tmp_path / "report.html")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout
    assert "embedded redis-server started" in out and "embedded redis-server stopped" in out
    assert "shadow stage verdict:" in out and "canary 50% verdict:" in out
    assert "accuracy on" in out and "conversion:" in out
    page = (tmp_path / "report.html").read_text()
    assert "data:image/png;base64," in page and "Shadow report: demo" in page
    # its embedded Redis lived under the working directory and is gone
    assert (tmp_path / ".router-data" / "demo" / "redis").is_dir()
    leftovers = [
        q for q in psutil.process_iter(["pid", "cmdline"])
        if q.info["pid"] not in before and str(tmp_path) in " ".join(q.info["cmdline"] or [])
    ]  # fmt: skip
    assert not leftovers, leftovers


def test_llm_demo_streams_and_compares_text(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    p = subprocess.run(
        [sys.executable, "-m", "router", "demo", "--llm", "--llm-requests", "60", "-o",
         str(tmp_path / "llm.html")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout
    assert "time to first token, median of 10 streamed requests: direct" in out
    assert "shadow verdict:" in out and "canary 50% verdict:" in out
    assert "60 mirrored pairs: exact match" in out and "refusals added by the challenger" in out
    assert "thumbs up: champion" in out
    page = (tmp_path / "llm.html").read_text()
    assert "exact match" in page and "The most different pairs" in page
