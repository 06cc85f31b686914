"""The code style the project holds itself to: ruff over everything, mypy --strict over the package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


def test_ruff_finds_nothing() -> None:
    out = subprocess.run([str(BIN / "ruff"), "check", "."], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_mypy_strict_is_clean_on_the_whole_package() -> None:
    # radstream/ and producers/, consumers/, stream-apps/ at their import paths (scripts/typecheck.sh)
    out = subprocess.run([str(ROOT / "scripts" / "typecheck.sh")], cwd=ROOT, capture_output=True, text=True,
                         timeout=280)
    assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-2000:]
    assert "Success" in out.stdout
