# Suite-wide set-up: a private empty host configuration, root allowed, skips fail under CI=true.
"""What every test, and every srsd process a test starts, sees.

* **No host configuration.** Before srsd is imported, ``SRSD_SYSCONFDIR`` points srsd at an
  empty directory of this run (:data:`SYSCONFDIR`) instead of ``/etc``, so neither
  ``/etc/srsd/srsd.toml``, ``/etc/srsd/secrets`` nor ``/etc/default/srsd`` of the machine
  running the suite changes anything; and the variables srsd reads from the environment (its
  settings' ``SRS_*`` names, systemd's ``CREDENTIALS_DIRECTORY``, ``NOTIFY_SOCKET``,
  ``LISTEN_FDS`` ...) are removed. Child processes inherit both. A test that wants a host
  configuration writes it under its own directory and passes ``--config`` or sets the
  variable for its child (``child_env`` in ``tests/harness/srsd_process.py``);
  :func:`_private_host_configuration` checks after each test that the shared directory is
  still empty.
* srsd refuses to serve as root without ``run_as`` or ``allow_root``. The tests run as root
  in CI and keep their files in root-only temporary directories, so every server they start
  inherits ``SRS_ALLOW_ROOT=yes``; the privilege-drop tests override it.
* With ``CI=true`` a skipped test fails, except the skips listed in :mod:`tests.ci_skips`.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from tests.ci_skips import pytest_make_collect_report, pytest_runtest_makereport

#: What systemd hands a service in its environment (srsd reads these too).
SYSTEMD_VARIABLES = (
    "CREDENTIALS_DIRECTORY",
    "NOTIFY_SOCKET",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "JOURNAL_STREAM",
    "INVOCATION_ID",
)

SYSCONFDIR = Path(tempfile.mkdtemp(prefix="srsd-tests-etc-"))
SYSCONFDIR.chmod(0o755)  # searchable by every user, as /etc is (run_as and nobody tests)
os.environ["SRSD_SYSCONFDIR"] = str(SYSCONFDIR)

# srsd is imported only now, after SRSD_SYSCONFDIR (read at import).
from srsd.config import settings  # noqa: E402
from srsd.host.logs import LOGGER  # noqa: E402
from tests.harness.daemon import world_traversable_dir  # noqa: E402
from tests.harness.inprocess import NEW_SECRET, SECRET, CapturedLog  # noqa: E402

assert settings.DEFAULT_CONFIG.is_relative_to(SYSCONFDIR), "srsd was imported before conftest"
for _name in {*SYSTEMD_VARIABLES, *(name for f in settings.FIELDS for name in f.env)}:
    os.environ.pop(_name, None)
os.environ["SRS_ALLOW_ROOT"] = "yes"


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(SYSCONFDIR, ignore_errors=True)


@pytest.fixture(autouse=True)
def _private_host_configuration() -> Iterator[None]:
    """Each test starts and ends with the private host configuration empty."""
    assert not any(SYSCONFDIR.iterdir()), f"{SYSCONFDIR} is not empty"
    yield
    assert not any(SYSCONFDIR.iterdir()), f"a test left files in {SYSCONFDIR}"


@pytest.fixture
def world_dir() -> Iterator[Path]:
    """A directory every user may traverse (pytest's tmp_path is root-only)."""
    with world_traversable_dir() as path:
        yield path


@pytest.fixture
def log() -> Iterable[CapturedLog]:
    """Every srsd log record of the test, at debug level too; no secret may be among them."""
    handler = CapturedLog()
    old_level = LOGGER.level
    LOGGER.addHandler(handler)
    LOGGER.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        LOGGER.removeHandler(handler)
        LOGGER.setLevel(old_level)
    assert SECRET.decode() not in handler.text()
    assert NEW_SECRET.decode() not in handler.text()


@pytest.fixture
def quiet_log() -> Iterable[None]:
    """srsd logs warnings and errors only (no handler, pytest's included, keeps records)."""
    old_level = LOGGER.level
    LOGGER.setLevel(logging.WARNING)
    try:
        yield
    finally:
        LOGGER.setLevel(old_level)


__all__ = ["pytest_make_collect_report", "pytest_runtest_makereport"]
