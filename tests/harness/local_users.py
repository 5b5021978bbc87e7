# Processes run as other local users (nobody, an unnamed uid) for the tests that need real peers.
"""The suite runs as root in CI; tests that need a peer owned by another user start a
child process with ``user=``/``group=`` (Debian's ``/usr/bin/python3``, which every user
may run, with a standard-library-only script). :data:`SECOND_UID` has no password entry:
root may switch to any uid, so no user has to be created or removed."""

from __future__ import annotations

import os
import pwd
import subprocess
from collections.abc import Sequence

import pytest

NOBODY = pwd.getpwnam("nobody").pw_uid
#: A second unprivileged uid, without a name.
SECOND_UID = 64123
#: The interpreter the children run: readable by every user (a venv under /root may not be).
SYSTEM_PYTHON = "/usr/bin/python3"


def require_root() -> None:
    """Skip when not root, except in CI, where it fails (CI runs as root)."""
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("these tests need root (to run peers as other users)")
        pytest.skip("needs root (to run peers as other users)")


def run_as(
    uid: int,
    code: str,
    args: Sequence[str] = (),
    *,
    nice: int = 0,
    stdout: int | None = subprocess.PIPE,
) -> subprocess.Popen[bytes]:
    """Start ``python3 -c code args...`` as ``uid`` (its group: ``uid`` too, none else),
    ``nice`` steps below this process's CPU priority."""
    command = [SYSTEM_PYTHON, "-c", code, *args]
    if nice:
        command = ["nice", "-n", str(nice), *command]
    return subprocess.Popen(
        command,
        user=uid,
        group=uid,
        extra_groups=[],
        stdin=subprocess.PIPE,
        stdout=stdout,
        stderr=subprocess.PIPE,
        cwd="/",
        env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"},
    )
