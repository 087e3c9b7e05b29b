"""`make lint` inside `make test`: ruff's checks and its formatter agree with every file of the project."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_ruff_check_passes():
    result = _ruff("check", ".", "--output-format", "concise")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_check_passes():
    result = _ruff("format", "--check", ".")
    assert result.returncode == 0, "run `ruff format .`:\n" + result.stdout + result.stderr


def test_the_checks_can_fail(tmp_path):
    """The same commands report a badly formatted file with an unused import (so a pass means something)."""
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nx=( 1,\n2 )\n")
    check = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--isolated", "--select", "F401", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    fmt = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--isolated", "--check", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 1 and "F401" in check.stdout
    assert fmt.returncode == 1 and "bad.py" in fmt.stdout + fmt.stderr
