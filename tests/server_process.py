# Runs a real `srsd serve` process for tests: free loopback ports, readiness, clean stop.
"""Start ``srsd serve`` as a child process the way a postmaster would run it.

``SrsdProcess`` picks free loopback ports below 32768, writes a secrets file if none is
given, waits until both ports accept connections and stops the process with SIGTERM
(then SIGKILL) on exit. Its stderr goes to a log file the tests can read.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from tests.ports import free_port

SECRET = b"test-secret-0123456789abcdef"
START_TIMEOUT = 20.0


class SrsdProcess:
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
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=self.env,
                cwd=self.workdir,
            )
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
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def log(self) -> str:
        """Everything the server wrote to stdout/stderr so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> SrsdProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


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


def metric_samples(port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> dict[str, float]:
    """Every sample of srsd's ``/metrics`` on ``port``, by its name with labels."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    samples = {}
    for line in data.partition(b"\r\n\r\n")[2].decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples
