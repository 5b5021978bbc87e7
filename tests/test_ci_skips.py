# Under CI=true a skip fails the run unless tests/ci_skips.py allows its reason.
"""Runs pytest on a small test file with and without ``CI=true`` and reads the outcome."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ci_skips import CI_ALLOWED_SKIPS, in_ci

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = next(iter(CI_ALLOWED_SKIPS))
CASES = f'''
import pytest

def test_skipped_for_no_good_reason():
    pytest.skip("chattr not installed")

@pytest.mark.skipif(True, reason="{ALLOWED}, in this sandbox")
def test_skipped_for_an_allowed_reason():
    pass

def test_passes():
    pass
'''
IMPORT_SKIP = 'import pytest\npytest.importorskip("no_such_module_for_srsd")\n'


def run(tmp_path: Path, ci: str | None) -> str:
    """pytest's summary of the two test files, run with ``CI`` unset or set to ``ci``."""
    (tmp_path / "test_cases.py").write_text(CASES, encoding="utf-8")
    (tmp_path / "test_import_skip.py").write_text(IMPORT_SKIP, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "tests.ci_skips",
            "-p",
            "no:cacheprovider",
            "-q",
            "-rA",
            "--continue-on-collection-errors",
            "--rootdir",
            str(tmp_path),
            "-c",
            os.devnull,
            str(tmp_path),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.stdout


def test_outside_ci_skips_are_skips(tmp_path: Path) -> None:
    out = run(tmp_path, "false")
    assert "1 passed, 3 skipped" in out, out


def test_under_ci_only_allowed_skips_remain(tmp_path: Path) -> None:
    out = run(tmp_path, "true")
    assert "1 failed, 1 passed, 1 skipped, 1 error" in out, out
    assert "skipped under CI=true: chattr not installed" in out
    assert "skipped under CI=true: could not import" in out
    assert "in_ci" not in out


@pytest.mark.parametrize(
    ("value", "ci"), [("true", True), ("1", True), ("TRUE", True), ("false", False), ("", False)]
)
def test_in_ci(value: str, ci: bool) -> None:
    assert in_ci({"CI": value}) is ci
    assert not in_ci({})
