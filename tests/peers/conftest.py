# Fixtures for the peer cross-checks: a real postsrsd 1.10 on free loopback ports, clock pinned.
"""Start Debian's postsrsd 1.10 in the foreground for the tests of this directory.

It listens on two free loopback ports below 32768 (``tests.harness.ports.free_port``), runs under
libfaketime (clock pinned to ``tests.peers.PINNED``, ticking), uses the same secrets as
the srsd side, and is stopped at teardown together with the children it forked (one per
connection): it runs in its own session, and only that process group is signalled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.child import read_log, spawn, terminate
from tests.harness.ports import free_port
from tests.peers import (
    DOMAIN,
    PINNED,
    SECRETS,
    TIMEOUT,
    Reply,
    TcpTableClient,
    faketime_env,
    require_postsrsd,
    wait_accepting,
)


class Postsrsd:
    """A running postsrsd 1.10 with one persistent tcp_table connection per port."""

    def __init__(self, workdir: Path) -> None:
        self.binary = require_postsrsd()
        self.secret_file = workdir / "postsrsd.secret"
        self.secret_file.write_bytes(b"".join(s + b"\n" for s in SECRETS))
        self.secret_file.chmod(0o600)
        self.log_path = workdir / "postsrsd.log"
        self.forward_port = free_port("127.0.0.1", count=2)
        self.reverse_port = self.forward_port + 1
        self.args = [
            self.binary,
            "-s",
            str(self.secret_file),
            "-d",
            DOMAIN.decode(),
            "-l",
            "127.0.0.1",
            "-4",
            "-f",
            str(self.forward_port),
            "-r",
            str(self.reverse_port),
            "-a",
            "=",
            "-n",
            "4",
            "-N",
            "4",
            "-t",
            "60",
        ]
        self.proc: subprocess.Popen[bytes] | None = None
        self.clients: list[TcpTableClient] = []

    def start(self) -> Postsrsd:
        self.proc = spawn(
            self.args,
            self.log_path,
            env=faketime_env(PINNED, frozen=False),
            start_new_session=True,
        )
        try:
            wait_accepting((self.forward_port, self.reverse_port), self.proc, "postsrsd")
        except RuntimeError as err:
            self.stop()
            raise RuntimeError(f"{err}\n{self.log()}") from None
        self.forward_client = TcpTableClient(self.forward_port)
        self.reverse_client = TcpTableClient(self.reverse_port)
        self.clients = [self.forward_client, self.reverse_client]
        return self

    def forward(self, sender: bytes) -> Reply:
        """Ask the forward (sender_canonical_maps) port."""
        return self.forward_client.get(sender)

    def reverse(self, recipient: bytes) -> Reply:
        """Ask the reverse (recipient_canonical_maps) port."""
        return self.reverse_client.get(recipient)

    def log(self) -> str:
        return read_log(self.log_path)

    def stop(self) -> None:
        for client in self.clients:
            client.close()  # the forked children exit on EOF
        if self.proc is None:
            return
        terminate(self.proc, TIMEOUT)
        # Children forked per connection share the session we created: end them too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def postsrsd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postsrsd]:
    """postsrsd 1.10, pinned to ``PINNED``, secrets ``SECRETS``, domain ``DOMAIN``."""
    server = Postsrsd(tmp_path_factory.mktemp("postsrsd")).start()
    try:
        yield server
    finally:
        server.stop()
