# What the harness's processes share: a child logging to a file, TERM-then-KILL, `with` use.
"""The life of every process the harness runs (srsd, NSD, postsrsd, ...), written once.

:func:`spawn` starts a child whose standard output and error go to a log file (its standard
input is ``/dev/null``), :func:`read_log` reads that file (empty before the first line),
:func:`terminate` stops a child with SIGTERM and, after a bounded wait, SIGKILL, and
:class:`Started` makes a class with ``start()`` and ``stop()`` a context manager.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

STOP_TIMEOUT = 10.0  # the bound on each wait for a child to exit


def spawn(argv: Sequence[str], log_path: Path, **popen: Any) -> subprocess.Popen[bytes]:
    """Start ``argv`` with stdout and stderr appended to ``log_path`` (``popen``: env, cwd...)."""
    with log_path.open("ab") as log:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, **popen)


def read_log(log_path: Path) -> str:
    """Everything the child wrote so far."""
    return log_path.read_text(errors="replace") if log_path.exists() else ""


def terminate(proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> int:
    """SIGTERM, a bounded wait, SIGKILL if needed; returns the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    return proc.returncode


class Started:
    """``with X(...) as x``: ``x.start()`` on entry, ``x.stop()`` on exit, errors included
    (a start that fails is stopped too, so that nothing it started is left running)."""

    def start(self) -> object:
        raise NotImplementedError

    def stop(self) -> object:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
