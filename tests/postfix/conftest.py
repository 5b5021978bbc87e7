# Fixtures for the real-Postfix tests: Postfix programs present, a running map server.
"""Shared fixtures for ``tests/postfix``.

* ``postfix_programs`` (session, autouse): the tests here need Debian's ``postfix``; when
  ``postfix``/``postmap`` are missing every test FAILS with a clear message instead of being
  skipped, so that a broken CI image cannot pass silently.
* ``srsd_server`` (module): ``srsd serve`` on two free loopback ports (``SrsdProcess``).

Their helpers (main.cf for the maps, sending mail, the SRS oracle) are in
``tests/harness/mail_flow.py``.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from tests.harness.mail_flow import SRS_DOMAIN, PostfixPrograms
from tests.harness.postfix import backdate, find_program
from tests.harness.srsd_process import SECRET, SrsdProcess

REQUIRED_PROGRAMS = ("postfix", "postmap", "postconf", "postqueue")


@pytest.fixture(scope="session", autouse=True)
def postfix_programs(tmp_path_factory: pytest.TempPathFactory) -> PostfixPrograms:
    """Fail (not skip) every test in this directory when Postfix is not installed."""
    found = {name: find_program(name) for name in REQUIRED_PROGRAMS}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        pytest.fail(
            f"tests/postfix need Debian's postfix, but {', '.join(missing)} "
            "cannot be found (on PATH or in /usr/sbin). Install it "
            "(DEBIAN_FRONTEND=noninteractive apt-get install -y postfix, 'No configuration') "
            "or deselect these tests with -m 'not postfix'.",
            pytrace=False,
        )
    programs = PostfixPrograms(**found)  # type: ignore[arg-type]
    # Every Postfix command wants a main.cf; Debian's "No configuration" install has none.
    confdir = tmp_path_factory.mktemp("postconf")
    (confdir / "main.cf").write_text("compatibility_level = 3.6\n")
    backdate(confdir / "main.cf")
    types = subprocess.run(
        [programs.postconf, "-c", str(confdir), "-m"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if "tcp" not in types.stdout.split():
        pytest.fail(
            f"this Postfix has no tcp: lookup tables (postconf -m: {types.stdout.split()}, "
            f"{types.stderr.strip()})",
            pytrace=False,
        )
    return programs


@pytest.fixture(scope="module")
def srsd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SrsdProcess]:
    """``srsd serve --domain forwarder.test`` with the test secret, for one test module."""
    workdir = tmp_path_factory.mktemp("srsd")
    with SrsdProcess(workdir, domain=SRS_DOMAIN, secrets=(SECRET,)) as server:
        yield server


# -- the SRS oracle -----------------------------------------------------------------------
