# Under CI=true a skipped test is a failed test, except for the skips listed here with why.
"""A pytest plugin (loaded by ``tests/conftest.py``): with ``CI`` set to true, every skip
fails the run, except those whose reason starts with a key of :data:`CI_ALLOWED_SKIPS`:
something a CI machine may lack that no set-up step can add. A skip anywhere else (atheris
missing, chattr refused on a tmpfs ``/tmp``, not running as root, a program not installed)
means the CI machine is not set up as the tests need, and the run says so.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Mapping
from typing import Any

import pytest

#: The only skips a CI run accepts, by the start of their reason, each with why CI may
#: lack what it needs.
CI_ALLOWED_SKIPS: dict[str, str] = {
    "no IPv6 loopback (::1) here": "a container started without IPv6 (Docker's default "
    "sets disable_ipv6) has no ::1, and a test cannot give it one",
}


def in_ci(environ: Mapping[str, str] = os.environ) -> bool:
    """True when the environment says this is a CI run (``CI=true``, as CI systems set)."""
    return environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def _reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    text = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return text.removeprefix("Skipped: ")


def _fail_unless_allowed(report: pytest.TestReport | pytest.CollectReport) -> None:
    if not report.skipped or hasattr(report, "wasxfail") or not in_ci():
        return
    reason = _reason(report)
    if not reason.startswith(tuple(CI_ALLOWED_SKIPS)):
        report.outcome = "failed"
        report.longrepr = (
            f"skipped under CI=true: {reason}\n(a CI run allows only the "
            "skips listed in tests/ci_skips.py CI_ALLOWED_SKIPS)"
        )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    """A test's skip (in set-up, call or a marker) fails under CI unless allowed."""
    outcome = yield
    _fail_unless_allowed(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, Any, None]:
    """A module's skip at import (``pytest.importorskip``) fails under CI unless allowed."""
    outcome = yield
    _fail_unless_allowed(outcome.get_result())
