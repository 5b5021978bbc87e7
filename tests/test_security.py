# A real srsd leaks no fd (postsrsd #141), logs nothing into sockets (#185); threat-model citations.
"""Regression tests for two postsrsd bugs of the process, not of the codec (``docs/security.md``):

* #141 (2.0.0-2.0.2): the parent leaked every accepted socket, and the service died after
  about 80 minutes. Here a real ``srsd serve`` takes hundreds of connections that end every
  way a connection can end; afterwards its open file descriptors are exactly those it had.
* #185 (2.x with ``-D``): stdout and stderr were closed, the next sockets got descriptors 1
  and 2, and log lines went into them, corrupting the protocol. Here srsd starts with
  descriptors 0, 1 and 2 closed and logging at debug level: every reply is exactly the
  protocol's bytes.

And ``docs/security.md`` cites tests as proof of its claims: every one it names exists.
"""

from __future__ import annotations

import contextlib
import re
import socket
import struct
import time
from pathlib import Path

from srsd.wire import tcp_table
from tests.harness.ports import free_port
from tests.harness.srsd_process import SrsdProcess, fd_targets, lookup

DOMAIN = b"forwarder.test"


def open_fds(pid: int) -> list[str]:
    """What the process's file descriptors point at, sorted."""
    return sorted(fd_targets(pid).values())


def reset(sock: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0) instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def steady(pid: int, quiet: float = 1.0) -> list[str]:
    """The process's descriptors once they have not changed for ``quiet`` seconds (the
    connections of the start-up probes and the warm-up lookup closed)."""
    last, since = open_fds(pid), time.monotonic()
    while time.monotonic() - since < quiet:
        time.sleep(0.05)
        now = open_fds(pid)
        if now != last:
            last, since = now, time.monotonic()
    return last


def settle(pid: int, baseline: list[str], seconds: float = 10.0) -> list[str]:
    """The process's descriptors once they are back to ``baseline`` (or the time is up)."""
    deadline = time.monotonic() + seconds
    while True:
        now = open_fds(pid)
        if now == baseline or time.monotonic() > deadline:
            return now
        time.sleep(0.05)


def test_connections_ending_every_way_leak_no_descriptor(tmp_path: Path) -> None:
    socketmap_port = free_port("127.0.0.1")
    limits = ["--max-connections", "8", "--socketmap", f"inet:127.0.0.1:{socketmap_port}"]
    with SrsdProcess(tmp_path, extra_args=limits) as srsd:
        assert srsd.proc is not None
        pid = srsd.proc.pid
        ports = (srsd.forward_port, srsd.reverse_port)
        assert lookup(srsd.forward_port, b"alice@example.org").startswith(b"200 SRS0=")
        baseline = steady(pid)
        for round_ in range(30):
            port = ports[round_ % 2]
            # served, then closed by the client
            assert lookup(port, b"u%d@example.org" % round_).startswith((b"200 ", b"500 "))
            # connected and closed without a word; reset mid-request
            socket.create_connection(("127.0.0.1", port)).close()
            half = socket.create_connection(("127.0.0.1", port))
            half.sendall(b"get half-a-requ")
            reset(half)
            # a protocol error (a line longer than any request): srsd answers, lingers, closes
            with socket.create_connection(("127.0.0.1", port), timeout=10) as long:
                long.sendall(b"get " + b"x" * tcp_table.MAX_REQUEST + b"\n")
                assert read_until_closed(long).startswith(b"500 ")
            with socket.create_connection(("127.0.0.1", socketmap_port), timeout=10) as bad:
                bad.sendall(b"12345678:")
                assert read_until_closed(bad) == b"25:NOTFOUND Address too long,"
            # every connection of the round is gone, and its descriptor with it
            assert settle(pid, baseline) == baseline, f"round {round_}"
        # bursts past max_connections (8): the extra connections evict the older ones
        for burst_ in range(10):
            burst = [socket.create_connection(("127.0.0.1", ports[burst_ % 2])) for _ in range(12)]
            for sock in burst[::2]:
                reset(sock)
            for sock in burst[1::2]:
                sock.close()
        # (connections still in the listen queue are accepted later: wait for quiet)
        assert steady(pid) == baseline
        assert lookup(srsd.reverse_port, b"bob@example.org") == b"500 Not%20an%20SRS%20address."


def ask(port: int, request: bytes, expect_lines: int = 1) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while data.count(b"\n") < expect_lines:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


def test_closed_stdio_never_puts_log_lines_into_sockets(tmp_path: Path) -> None:
    srsd = SrsdProcess(tmp_path, extra_args=["--log-level", "debug"])
    # the shell closes descriptors 0, 1 and 2, then becomes srsd: its first sockets get them
    srsd.args = ["sh", "-c", 'exec "$@" 0<&- 1>&- 2>&-', "sh", *srsd.args]
    with srsd:
        assert srsd.proc is not None
        fds = fd_targets(srsd.proc.pid)
        assert any(fds.get(n, "").startswith("socket:") for n in (0, 1, 2)), fds
        forward = ask(srsd.forward_port, b"get alice@example.org\nget bob\nput x\n", 3)
        lines = forward.split(b"\n")
        assert lines[0].startswith(b"200 SRS0=") and lines[0].endswith(b"=alice@" + DOMAIN)
        assert lines[1:] == [
            b"500 no%20domain",
            b"500 Invalid%20request,%20expected%20'get%20KEY'",
            b"",
        ]
        address = lines[0][4:]
        assert ask(srsd.reverse_port, b"get " + address + b"\n") == b"200 alice@example.org\n"
        forged = address.replace(b"SRS0=", b"SRS0=x", 1)
        assert ask(srsd.reverse_port, b"get " + forged + b"\n").startswith(b"500 ")
        assert srsd.proc.poll() is None  # still serving


def test_the_threat_model_names_only_tests_that_exist() -> None:
    """``docs/security.md`` cites tests as proof: each file and function it names exists."""
    root = Path(__file__).resolve().parents[1]
    doc = (root / "docs" / "security.md").read_text()
    suite = "\n".join(path.read_text() for path in (root / "tests").rglob("*.py"))
    missing = []
    for path, function in re.findall(r"`((?:tests|fuzz|bench)/[\w/]+\.py)(?:::(\w+))?`", doc):
        if not (root / path).is_file():
            missing.append(path)
        elif function and not re.search(
            rf"^\s*(?:async )?def {function}\b|^{function}\b", (root / path).read_text(), re.M
        ):
            missing.append(f"{path}::{function}")
    for function in re.findall(r"`(test_\w+)`", doc):
        if not re.search(rf"^\s*(?:async )?def {function}\b", suite, re.M):
            missing.append(function)
    assert not missing, f"docs/security.md names what does not exist: {missing}"
