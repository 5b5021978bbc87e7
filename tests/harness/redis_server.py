# A throw-away redis-server on a free loopback port, for the envelope storage tests.
"""Start Debian's ``redis-server`` in the foreground, without persistence, and stop it.

It listens on 127.0.0.1 at a port below 32768 (``tests.harness.ports.free_port``) and on a unix
socket in its own directory; :meth:`RedisServer.stop` (or :meth:`RedisServer.kill`, a
crash) and :meth:`RedisServer.start` can be called again to simulate an outage or a restart
on the same port. ``appendonly=True`` runs it as README asks a fleet to (AOF with
``appendfsync always``, in its directory, so a restart loads what it had); ``extra`` adds
``redis-server`` arguments. Every wait is bounded.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.harness.child import spawn, terminate
from tests.harness.ports import free_port

START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0


def require_redis_server() -> str:
    """Path of redis-server; fails the test if it is missing."""
    path = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    if path is None:
        pytest.fail("redis-server not found: install Debian's 'redis-server'", pytrace=False)
    return path


def require_redis_py() -> None:
    """Fail the test, saying what to install, when redis-py is missing."""
    try:
        import redis  # noqa: F401
    except ImportError:
        pytest.fail("redis-py not found: pip install -e '.[test,redis]'", pytrace=False)


class RedisServer:
    """One redis-server process: ``port`` on 127.0.0.1 and ``unix_path``."""

    def __init__(
        self, workdir: Path, *, appendonly: bool = False, extra: tuple[str, ...] = ()
    ) -> None:
        self.binary = require_redis_server()
        self.appendonly = appendonly
        self.extra = extra
        require_redis_py()
        self.workdir = workdir
        self.port = free_port("127.0.0.1")
        self.unix_path = workdir / "redis.sock"
        self.log_path = workdir / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start the server and wait (bounded) until it answers PING."""
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--unixsocket",
            str(self.unix_path),
            "--unixsocketperm",
            "700",
            "--save",
            "",
            *(
                ("--appendonly", "yes", "--appendfsync", "always")
                if self.appendonly
                else ("--appendonly", "no")
            ),
            "--dir",
            str(self.workdir),
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
            *self.extra,
        ]
        self.proc = spawn(args, self.log_path, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.log_path.read_text()}")
            if self._pong():
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer within {START_TIMEOUT} s")

    def _pong(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open, nothing answers."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused server run again (SIGCONT)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """Crash the server (SIGKILL): what it had not made durable is lost."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.kill()
        proc.wait(timeout=STOP_TIMEOUT)

    def stop(self) -> None:
        """Stop the server (TERM, then KILL after a bounded wait)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGCONT)  # in case it was paused
        terminate(proc, STOP_TIMEOUT)
