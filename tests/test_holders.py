# Who holds a TCP port: the /proc/net/tcp parser, and a real listener of another process.
""":mod:`srsd.host.holders` against the kernel's own tables: a listener in a child process
is named by program and pid as root; as another user only its owner can be told; a free
port says that nothing can be told. (``srsd serve``'s start error and doctor's endpoint check
naming a holder are tested end to end in tests/test_doctor_postfix.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from srsd.host import holders
from tests.harness.local_users import NOBODY, require_root
from tests.harness.ports import free_port
from tests.harness.srsd_process import SrsdProcess

TABLE = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:2711 00000000:0000 0A 00000000:00000000 00:00000000 00000000   108        0 4242 1
   1: 0100007F:2711 0100007F:C350 01 00000000:00000000 00:00000000 00000000  1000        0 4243 1
   2: 00000000:2712 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 0 1
   3: garbage
   4: 0100007F:2711 00000000:0000 XX 00000000:00000000 00:00000000 00000000     0        0 77 1
"""

LISTENER = """
import socket, sys
s = socket.socket()
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen()
print("listening", flush=True)
sys.stdin.read()
"""


def test_parse_listeners_keeps_listening_sockets_on_the_port() -> None:
    assert holders.parse_listeners(TABLE, 0x2711) == [(108, 4242)]  # not the connection
    assert holders.parse_listeners(TABLE, 0x2712) == []  # inode 0: no owner
    assert holders.parse_listeners("", 0x2711) == []


@pytest.fixture
def listener() -> Iterator[tuple[int, subprocess.Popen[str]]]:
    port = free_port("127.0.0.1")
    child = subprocess.Popen(
        [sys.executable, "-c", LISTENER, str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None and child.stdout.readline() == "listening\n"
    yield port, child
    child.kill()
    child.wait(timeout=10)


def test_a_listener_of_another_process_is_named(
    listener: tuple[int, subprocess.Popen[str]],
) -> None:
    require_root()
    port, child = listener
    name = Path(f"/proc/{child.pid}/comm").read_text().strip()
    assert holders.describe(port) == f"held by {name} (pid {child.pid}, user root)"
    assert holders.held_by_another(port) == holders.describe(port)  # python -c: not srsd


def test_as_another_user_only_the_owner_is_told(
    listener: tuple[int, subprocess.Popen[str]],
) -> None:
    require_root()
    port, _ = listener
    os.seteuid(NOBODY)
    try:
        said = holders.describe(port)
    finally:
        os.seteuid(0)
    assert said == "held by a process of root (which one, only root can tell)"


def test_a_free_port_cannot_be_told() -> None:
    said = holders.describe(free_port("127.0.0.1"))
    assert said.startswith("who holds it cannot be told")
    assert holders.held_by_another(free_port("127.0.0.1")) == ""


def test_srsd_holding_its_own_port_is_not_another_program(tmp_path: Path) -> None:
    require_root()
    with SrsdProcess(tmp_path) as server:
        said = holders.describe(server.forward_port)
        assert said.startswith("held by ") and f"pid {server.proc.pid}" in said  # type: ignore[union-attr]
        assert holders.held_by_another(server.forward_port) == ""
