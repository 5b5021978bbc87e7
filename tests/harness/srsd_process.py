# Runs a real `srsd serve` process for tests: free loopback ports, readiness, clean stop.
"""Start ``srsd serve`` as a child process the way a postmaster would run it.

``SrsdProcess`` picks free loopback ports below 32768, writes a secrets file if none is
given, waits until both ports accept connections and stops the process with SIGTERM
(then SIGKILL) on exit. Its stderr goes to a log file the tests can read.

Around it: :func:`running` (started with an empty config, stopped with status 0 and a clean
log), :func:`wait_log` and :func:`poll` (bounded waits), :func:`lookup` (one tcp_table request),
:func:`signed` (the SRS addresses a sender may get), :func:`child_env` (the environment of any
srsd child: this srsd, the suite's private host configuration, nothing of the machine's) and
:func:`empty_config`.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

import srsd
from srsd.srs.codec import Codec
from tests.harness.child import Started, read_log, spawn, terminate
from tests.harness.ports import free_port

SECRET = b"test-secret-0123456789abcdef"
START_TIMEOUT = 20.0


class SrsdProcess(Started):
    """A running ``srsd serve`` on 127.0.0.1 (use as a context manager)."""

    def __init__(
        self,
        workdir: Path,
        *,
        domain: str = "forwarder.test",
        secrets: Sequence[bytes] = (SECRET,),
        extra_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.workdir = workdir
        self.host = host
        self.domain = domain
        self.secret_file = workdir / "srsd.secret"
        self.secret_file.write_bytes(b"".join(s + b"\n" for s in secrets))
        self.secret_file.chmod(0o600)
        self.forward_port = free_port(host, count=2)
        self.reverse_port = self.forward_port + 1
        self.log_path = workdir / "srsd.log"
        self.args = [
            sys.executable,
            "-m",
            "srsd",
            "serve",
            "--domain",
            domain,
            "--secret-file",
            str(self.secret_file),
            "--listen",
            host,
            "--forward-port",
            str(self.forward_port),
            "--reverse-port",
            str(self.reverse_port),
            "--state-dir",
            str(workdir / "state"),
            *extra_args,
        ]
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> SrsdProcess:
        """Start the server and wait until both ports accept connections."""
        return self.spawn().wait_ready()

    def spawn(self) -> SrsdProcess:
        """Start the server process; return at once (see :meth:`wait_ready`)."""
        self.proc = spawn(self.args, self.log_path, env=self.env, cwd=self.workdir)
        return self

    def wait_ready(self) -> SrsdProcess:
        """Wait until both ports accept connections (bounded); raise if srsd exits first."""
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"srsd exited with {self.proc.returncode}:\n{self.log()}")
            if all(self._accepting(p) for p in (self.forward_port, self.reverse_port)):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"srsd did not start within {START_TIMEOUT} s:\n{self.log()}")

    def _accepting(self, port: int) -> bool:
        try:
            with socket.create_connection((self.host, port), timeout=1):
                return True
        except OSError:
            return False

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the server."""
        if self.proc is None:
            raise RuntimeError("not started")
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, wait, SIGKILL if needed; returns the exit status."""
        return 0 if self.proc is None else terminate(self.proc, timeout)

    def log(self) -> str:
        """Everything the server wrote to stdout/stderr so far."""
        return read_log(self.log_path)


def fd_targets(pid: int) -> dict[int, str]:
    """What each of the process's file descriptors points at (``/proc/PID/fd``); a descriptor
    closed between listing and reading is left out (the server opens and closes some)."""
    targets = {}
    for entry in Path(f"/proc/{pid}/fd").iterdir():
        try:
            targets[int(entry.name)] = os.readlink(entry)
        except FileNotFoundError:
            continue
    return targets


def lookup(port: int, key: bytes, host: str = "127.0.0.1", timeout: float = 10.0) -> bytes:
    """One tcp_table request on a new connection; returns the reply line without LF."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(b"get " + key + b"\n")
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = s.recv(8192)
            if not chunk:
                break
            reply += chunk
    return reply.rstrip(b"\n")


TIMEOUT = 10.0  # the bound on every wait here
NEW_SECRET = b"rotated-secret-9f8e7d6c5b4a"
SRC = Path(srsd.__file__).resolve().parents[1]  # the srsd this test process imported
ALICE = b"alice@example.org"
DOMAIN = b"forwarder.test"  # SrsdProcess's default domain
LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} srsd\[\d+\]: [A-Z]+: ")


def child_env(home: Path, *, allow_root: bool = True, **extra: str) -> dict[str, str]:
    """A clean environment for an srsd child: this srsd on PYTHONPATH, the suite's private
    host configuration (``SRSD_SYSCONFDIR``, tests/conftest.py) and nothing else of this
    machine's (no SRS_* variable leaks in)."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "PYTHONPATH": str(SRC),
        "SRSD_SYSCONFDIR": os.environ["SRSD_SYSCONFDIR"],
    }
    if allow_root:  # CI runs as root; the privilege tests say otherwise
        env["SRS_ALLOW_ROOT"] = "yes"
    env.update(extra)
    return env


def empty_config(workdir: Path) -> Path:
    """An empty settings file everyone may read, for ``--config``."""
    config = workdir / "empty.toml"
    config.write_text("# no settings\n", encoding="utf-8")
    config.chmod(0o644)
    return config


def forward(port: int, sender: bytes = ALICE) -> tuple[bytes, float, float]:
    t0 = time.time()
    reply = lookup(port, sender, timeout=TIMEOUT)
    return reply, t0, time.time()


def poll(predicate: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def wait_log(srv: SrsdProcess, text: str, count: int = 1) -> None:
    def logged() -> bool:
        if srv.log().count(text) >= count:
            return True
        assert srv.proc is not None
        if srv.proc.poll() is not None:
            pytest.fail(
                f"srsd exited ({srv.proc.returncode}) before logging {text!r}:\n{srv.log()}"
            )
        return False

    poll(logged, f"{count} x {text!r} in the log:\n{srv.log()}")


def assert_clean_log(log: str, *secrets: bytes) -> None:
    """Every line is one log record (nothing forged), and no secret is in it."""
    for secret in (SECRET, NEW_SECRET, *secrets):
        assert secret.decode() not in log
    for line in log.splitlines():
        assert LOG_LINE.match(line), f"not a log record: {line!r}"


@contextmanager
def running(
    tmp_path: Path,
    *,
    extra: Sequence[str] = (),
    log_level: str = "info",
    secrets: Sequence[bytes] = (SECRET,),
) -> Iterator[SrsdProcess]:
    """``srsd serve`` started, stopped at the end with exit status 0 and a clean log."""
    srv = SrsdProcess(
        tmp_path,
        secrets=secrets,
        extra_args=["--config", str(empty_config(tmp_path)), "--log-level", log_level, *extra],
    )
    srv.env = child_env(tmp_path / "home")
    with srv:
        yield srv
        assert srv.stop(TIMEOUT) == 0, srv.log()
    assert_clean_log(srv.log())


def srsd_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "srsd", *args]


def signed(
    secret: bytes, sender: bytes, t0: float, t1: float, domain: bytes = DOMAIN
) -> set[bytes]:
    """The SRS address ``sender`` gets with ``secret`` as first secret, between t0 and t1."""
    codec = Codec([secret], domain)
    return {codec.forward(sender, t) for t in (t0, t1)}
