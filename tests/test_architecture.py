"""The house plan holds: the import-linter contracts of pyproject.toml, and no import cycle.

The contracts (layers, the forbidden imports, no cycle between the modules or packages of any
package) are checked by ``lint-imports`` exactly as a developer runs it; a broken contract fails
here with its report. The cycle check below looks at every module, package ``__init__`` included,
and counts every import: module level, inside functions, and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import grimp

from tests.helpers import ROOT


def test_import_linter_contracts_are_kept() -> None:
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"][
        "contracts"
    ]
    assert {c["type"] for c in contracts} >= {"layers", "forbidden", "acyclic_siblings"}
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert exe is not None, "lint-imports is not installed (pip install -e '.[dev]')"
    proc = subprocess.run(
        [exe, "--no-cache", "--no-logo"], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, report
    summary = re.search(r"Contracts: (\d+) kept, (\d+) broken", report)
    assert summary is not None, report
    assert (int(summary[1]), int(summary[2])) == (len(contracts), 0), report


def test_no_import_cycle_between_router_modules() -> None:
    graph = grimp.build_graph("router", cache_dir=None)
    cycles = []
    for module in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            back = graph.find_shortest_chain(importer=imported, imported=module)
            if back is not None:
                cycles.append(" -> ".join((module, *back)))
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
