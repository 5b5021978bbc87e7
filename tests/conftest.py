# Suite-wide set-up: srsd servers may stay root (CI runs as root); skips fail under CI=true.
"""srsd refuses to serve as root without ``run_as`` or ``allow_root``. The tests run as
root in CI and keep their files in root-only temporary directories, so every server they
start inherits ``SRS_ALLOW_ROOT=yes``; the privilege-drop tests override it.

With ``CI=true`` a skipped test fails, except the skips listed in :mod:`tests.ci_skips`.
"""

from __future__ import annotations

import os

from tests.ci_skips import pytest_make_collect_report, pytest_runtest_makereport

os.environ["SRS_ALLOW_ROOT"] = "yes"

__all__ = ["pytest_make_collect_report", "pytest_runtest_makereport"]
