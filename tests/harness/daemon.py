# srsd as a service manager runs it: a logged child process, sd_notify, socket activation, health.
"""What the operations tests share: :class:`Daemon` (any child process, srsd or
``systemd-socket-activate`` exec'ing srsd, logging to a file, with bounded waits),
:class:`NotifySocket` (the receiving end of sd_notify), :func:`activation_argv`,
:func:`serve_args`, :func:`health` (``srsd health`` as a subprocess),
:func:`socketmap_query` and the systemd tools' presence (:func:`need_tool`).
"""

from __future__ import annotations

import os
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from srsd.wire import socketmap
from tests.harness.child import Started, read_log, spawn, terminate
from tests.harness.srsd_process import child_env, empty_config

TIMEOUT = 10.0  # the bound on every wait here
DOMAIN = "forwarder.test"
SECRET = b"operations-secret-0123456789"
INSTALL_HINT = "install Debian's systemd package: apt-get install systemd"


def need_tool(name: str) -> str:
    """The path of a systemd tool; a failure (never a silent skip) when it is missing."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: {INSTALL_HINT}")
    return path


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("the privilege tests need root: run the suite as root (see README.md)")


def write_secret(path: Path, *secrets: bytes) -> Path:
    path.write_bytes(b"".join(s + b"\n" for s in secrets or (SECRET,)))
    path.chmod(0o600)
    return path


def serve_args(workdir: Path, *extra: str, secret: Path | None = None) -> list[str]:
    """``python -m srsd serve`` with an empty config, the test domain and a state dir."""
    args = [
        sys.executable,
        "-m",
        "srsd",
        "serve",
        "--config",
        str(empty_config(workdir)),
        "--domain",
        DOMAIN,
        "--state-dir",
        str(workdir / "state"),
    ]
    if secret is not None:
        args += ["--secret-file", str(secret)]
    return [*args, *extra]


def proc_status(pid: int) -> dict[str, str]:
    """``/proc/PID/status`` as a dict (Uid, Gid, Groups, ...)."""
    text = Path(f"/proc/{pid}/status").read_text()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


class Daemon(Started):
    """A child process (srsd, or systemd-socket-activate exec'ing srsd) logging to a file."""

    def __init__(
        self, argv: Sequence[str], env: dict[str, str], workdir: Path, *, umask: int = -1
    ) -> None:
        self.argv = list(argv)
        self.env = env
        self.workdir = workdir
        self.log_path = workdir / f"daemon-{uuid.uuid4().hex[:8]}.log"
        self.umask = umask
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> Daemon:
        self.proc = spawn(
            self.argv, self.log_path, env=self.env, cwd=self.workdir, umask=self.umask
        )
        return self

    def log(self) -> str:
        return read_log(self.log_path)

    def wait_log(self, text: str, count: int = 1, timeout: float = TIMEOUT) -> None:
        """Wait until ``text`` appears ``count`` times; fail early if the process exits."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while self.log().count(text) < count:
            if self.proc.poll() is not None and self.log().count(text) < count:
                pytest.fail(
                    f"exited ({self.proc.returncode}) before logging {text!r}:\n{self.log()}"
                )
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {text!r} in the log:\n{self.log()}")
            time.sleep(0.02)

    def wait_exit(self, timeout: float = TIMEOUT) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            pytest.fail(f"still running after {timeout} s:\n{self.log()}")

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self) -> int:
        """SIGTERM, a bounded wait, SIGKILL if needed; returns the exit status."""
        return 0 if self.proc is None else terminate(self.proc, TIMEOUT)


class NotifySocket:
    """The receiving end of sd_notify: a unix datagram socket, with the sender's credentials."""

    def __init__(self, address: str) -> None:
        """``address``: a path, or ``@name`` for the abstract namespace (as NOTIFY_SOCKET)."""
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)

    def receive(self, timeout: float = TIMEOUT) -> tuple[list[str], int]:
        """The next datagram's ``KEY=value`` lines and the sending process's pid."""
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if not ready:
            pytest.fail(f"no sd_notify message within {timeout} s")
        data, ancdata, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        pid = 0
        for level, kind, cdata in ancdata:
            if (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS):
                pid = struct.unpack("3i", cdata[:12])[0]
        return data.decode().split("\n"), pid

    def nothing_more(self, wait: float = 0.2) -> bool:
        ready, _, _ = select.select([self.sock], [], [], wait)
        return not ready

    def close(self) -> None:
        self.sock.close()


def socketmap_query(address: str | tuple[str, int], *requests: bytes) -> list[bytes]:
    """Send socketmap requests (``b"forward alice@..."``) on one connection; the replies."""
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect(address)
        replies = []
        data = b""
        for request in requests:
            sock.sendall(socketmap.netstring(request))
            while (parsed := socketmap.parse_netstring(data)) is None:
                chunk = sock.recv(8192)
                assert chunk, "connection closed without a reply"
                data += chunk
            reply, data = parsed
            replies.append(reply)
    return replies


def activation_argv(
    listen: Sequence[str], names: Sequence[str], env: dict[str, str], command: Sequence[str]
) -> list[str]:
    """systemd-socket-activate listening on ``listen`` with ``names``, exec'ing ``command``.

    It passes its children only TERM, PATH, USER and HOME of its own environment, so the
    rest goes through ``-E NAME=VALUE``.
    """
    argv = [need_tool("systemd-socket-activate")]
    for address in listen:
        argv += ["-l", address]
    argv.append("--fdname=" + ":".join(names))
    for name, value in env.items():
        if name not in {"PATH", "HOME"}:
            argv += ["-E", f"{name}={value}"]
    return [*argv, "--", *command]


@contextmanager
def world_traversable_dir() -> Iterator[Path]:
    """A directory every user may traverse (pytest's tmp_path is root-only), then removed."""
    path = Path(tempfile.mkdtemp(prefix="srsd-priv-", dir="/tmp"))
    try:
        path.chmod(0o755)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def health(workdir: Path, *args: str, timeout: float = TIMEOUT) -> tuple[int, list[str], float]:
    """``srsd health`` with the secrets file unreadable (it never needs it)."""
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "srsd",
            "health",
            "--config",
            str(empty_config(workdir)),
            "--domain",
            DOMAIN,
            "--secret-file",
            "/nonexistent/secrets",
            *args,
        ],
        env=child_env(workdir),
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.stderr == ""
    return done.returncode, done.stdout.splitlines(), time.monotonic() - started
