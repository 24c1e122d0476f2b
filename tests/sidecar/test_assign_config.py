"""Assignment (pure) and config validation: tables of cases, h11 style."""

from __future__ import annotations

import hashlib
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from router.config import ConfigError, load_config, parse_config
from router.sidecar.assign import BUCKETS, assign, bucket, in_treatment, threshold
from tests.helpers import ROOT

UNITS = [f"user-{i}" for i in range(20_000)]


def test_bucket_matches_documented_formula() -> None:
    for unit in ("alice", "bob", "42", "ünïcode", ""):
        digest = hashlib.sha256(f"s1:{unit}".encode()).digest()
        assert bucket("s1", unit) == int.from_bytes(digest[:8], "big") % 10000


def test_known_vectors_are_stable() -> None:
    # Frozen values: if these change, every deployed assignment would move.
    assert [bucket("demo-2026-11", u) for u in ("u1", "u2", "u3")] == [3623, 7482, 5767]
    expected = int.from_bytes(hashlib.sha256(b"salt:unit-7").digest()[:8], "big") % 10000
    assert bucket("salt", "unit-7") == expected


@pytest.mark.parametrize("fraction", [0.0, 0.05, 0.25, 0.5, 0.9, 1.0])
def test_split_fraction_within_binomial_tolerance(fraction: float) -> None:
    treated = sum(assign("exp-salt", u, fraction)[1] for u in UNITS)
    n = len(UNITS)
    sd = math.sqrt(n * fraction * (1 - fraction))
    assert abs(treated - n * fraction) <= 4 * sd + 1e-9


def test_monotonic_ramp_5_to_25_percent() -> None:
    at5 = {u for u in UNITS if assign("ramp", u, 0.05)[1]}
    at25 = {u for u in UNITS if assign("ramp", u, 0.25)[1]}
    assert at5 <= at25  # raising the fraction only moves champion -> challenger
    assert len(at5) < len(at25)


def test_sticky_same_unit_same_variant() -> None:
    for u in UNITS[:500]:
        assert assign("s", u, 0.3) == assign("s", u, 0.3)


def test_independent_salts() -> None:
    a = [assign("salt-a", u, 0.5)[1] for u in UNITS]
    b = [assign("salt-b", u, 0.5)[1] for u in UNITS]
    both = sum(x and y for x, y in zip(a, b, strict=True))
    n = len(UNITS)
    # independent => P(both) = 0.25; 4 sigma band
    assert abs(both - n * 0.25) <= 4 * math.sqrt(n * 0.25 * 0.75)


def test_assignment_in_separate_process_equals_in_process() -> None:
    code = (
        "from router.sidecar.assign import bucket;"
        "print(','.join(str(bucket('xproc', f'user-{i}')) for i in range(300)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout.strip()
    assert out == ",".join(str(bucket("xproc", f"user-{i}")) for i in range(300))


@pytest.mark.parametrize(
    ("fraction", "expected"), [(0.0, 0), (0.05, 500), (0.25, 2500), (1.0, BUCKETS)]
)
def test_threshold(fraction: float, expected: int) -> None:
    assert threshold(fraction) == expected
    assert not in_treatment(expected, fraction) or expected == BUCKETS


@pytest.mark.parametrize("fraction", [-0.1, 1.5])
def test_threshold_rejects_out_of_range(fraction: float) -> None:
    with pytest.raises(ValueError):
        threshold(fraction)


# ---- config ---------------------------------------------------------------------------------


def _base() -> dict:
    return yaml.safe_load((ROOT / "configs" / "router.yaml").read_text())


def test_example_config_is_valid() -> None:
    cfg = load_config(ROOT / "configs" / "router.yaml")
    assert cfg.experiment.name == "demo"
    assert cfg.champion.port == 9001


@pytest.mark.parametrize(
    ("mutate", "key", "problem"),
    [
        (lambda d: d.update(listne="x"), "listne", "unknown key"),
        (lambda d: d["experiment"].update(spilt=0.1), "experiment.spilt", "unknown key"),
        (lambda d: d["experiment"].update(split=1.5), "experiment.split", "less than or equal"),
        (lambda d: d["experiment"].update(mirror=-0.1), "experiment.mirror", "greater than"),
        (lambda d: d["experiment"].update(split="lots"), "experiment.split", "valid number"),
        (lambda d: d["champion"].update(url="ftp://x"), "champion.url", "http://"),
        (lambda d: d["champion"].update(url="http://:99999"), "champion.url", ""),
        (lambda d: d.pop("champion"), "champion", "required key is missing"),
        (lambda d: d["limits"].update(max_body=0), "limits.max_body", "greater than"),
        (lambda d: d.update(listen="nope"), "listen", "HOST:PORT"),
        (lambda d: d["capture"].update(redis="mysql://x"), "capture.redis", "embedded"),
        (
            lambda d: d["experiment"].update(shadow_header="Host: x"),
            "experiment.shadow_header",
            "Host",
        ),
    ],
)
def test_invalid_config_names_file_key_and_problem(
    mutate, key: str, problem: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    data = _base()
    mutate(data)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}: {key}: "), msg
    assert problem in msg


def test_cli_exits_nonzero_with_one_line(tmp_path: Path) -> None:
    data = _base()
    data["experiment"]["split"] = 2
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    proc = subprocess.run(
        [sys.executable, "-m", "router", "serve", "-c", str(path)],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "experiment.split" in lines[0] and str(path) in lines[0]


def test_parse_rejects_non_mapping() -> None:
    with pytest.raises(ConfigError, match="expected a mapping"):
        parse_config([1, 2], "x.yaml")


def test_invalid_yaml_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("listen: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(path)
