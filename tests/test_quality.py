"""Static quality gates run with the suite: ruff (lint) on everything, mypy on the package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)


def test_ruff_clean() -> None:
    proc = _run(sys.executable, "-m", "ruff", "check", "router", "tests", "benchmarks", "loadtests")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_clean_on_the_package() -> None:
    proc = _run(sys.executable, "-m", "mypy", "router")
    assert proc.returncode == 0, proc.stdout + proc.stderr
