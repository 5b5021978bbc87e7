# `chattr +i` for tests: files and directories read-only even for root, always undone.
"""Outage tests need storage that refuses writes while the suite runs as root.

chmod does not stop root (CAP_DAC_OVERRIDE), and it never stops writes through a file
descriptor that is already open. The immutable flag does both: the kernel refuses any
write to the inode, also through open descriptors, also for root. It needs
CAP_LINUX_IMMUTABLE and a file system that has the flag (ext4, xfs, btrfs; not tmpfs);
where it cannot be set the test is skipped with the reason. Never put it on SQLite's
``-shm`` file: SQLite maps that file into memory, and a write to the mapping of an
immutable file kills the process with SIGBUS.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

TIMEOUT = 10


@contextlib.contextmanager
def immutable(*paths: Path) -> Iterator[None]:
    """``chattr +i`` on ``paths`` for the ``with`` block; the flag is always removed."""
    if shutil.which("chattr") is None:
        pytest.skip("chattr not installed")
    done: list[Path] = []
    try:
        for path in paths:
            result = subprocess.run(
                ["chattr", "+i", str(path)], capture_output=True, text=True, timeout=TIMEOUT
            )
            if result.returncode != 0:
                pytest.skip(f"chattr +i not possible here: {result.stderr.strip()}")
            done.append(path)
        yield
    finally:
        for path in done:
            subprocess.run(["chattr", "-i", str(path)], timeout=TIMEOUT, check=True)
