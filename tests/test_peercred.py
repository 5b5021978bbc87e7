# The owner of each peer: real peers as other users over TCP and unix sockets; the parsers.
"""Tests of :mod:`srsd.admission.owners`.

Real peers: a child process running as ``nobody`` (or a uid without a name) connects over
loopback TCP (IPv4, IPv6, IPv4 on a dual-stack listener) and over a unix socket; srsd's
lookup must name that uid, by sock_diag and by the /proc fallback; a peer that has closed
must never be reported as root (the kernel says uid 0 for TIME-WAIT and orphaned sockets).
The byte parsers: exact replies built here, then any bytes (hypothesis): only a valid
owner, None or :class:`~srsd.admission.owners.PeerError`, never another exception.
"""

from __future__ import annotations

import os
import socket
import struct
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from srsd.admission import owners as owner_wire
from srsd.admission.owners import ABSENT, REMOTE, UNKNOWN_OWNER, FourTuple, PeerError, PeerOwners
from tests.harness.local_users import NOBODY, SECOND_UID, require_root, run_as

TIMEOUT = 10.0

# A peer that connects to argv[1] (host) argv[2] (port, or a unix path when host is
# "unix"), says "connected" on stdout, then waits for a line on stdin and closes.
PEER = """
import socket, sys
host, where = sys.argv[1], sys.argv[2]
if host == "unix":
    s = socket.socket(socket.AF_UNIX)
    s.connect(where)
else:
    s = socket.create_connection((host, int(where)), timeout=10)
print("connected", flush=True)
sys.stdin.readline()
s.close()
"""


@pytest.fixture(scope="module")
def owners() -> Iterator[PeerOwners]:
    found = PeerOwners()
    assert found.method == "sock_diag", "this Linux should offer sock_diag"
    yield found
    found.close()


@pytest.fixture(scope="module")
def proc_owners() -> Iterator[PeerOwners]:
    found = PeerOwners(methods=("proc",))
    assert found.method == "proc"
    yield found
    found.close()


@contextmanager
def peer_as(uid: int, server: socket.socket, host: str) -> Iterator[socket.socket]:
    """A connection accepted on ``server`` from a child running as ``uid``."""
    where = server.getsockname()
    target = where if host == "unix" else str(where[1])
    child = run_as(uid, PEER, [host, target])
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line == b"connected\n", child.stderr.read() if child.stderr else b""
        server.settimeout(TIMEOUT)
        conn, _ = server.accept()
        with conn:
            yield conn
    finally:
        if child.stdin is not None:
            child.stdin.close()
        child.wait(TIMEOUT)


@pytest.mark.parametrize("uid", [NOBODY, SECOND_UID])
@pytest.mark.parametrize(
    ("listen", "host"),
    [
        (("127.0.0.1", socket.AF_INET, False), "127.0.0.1"),
        (("::1", socket.AF_INET6, False), "::1"),
        (("::", socket.AF_INET6, True), "127.0.0.1"),  # IPv4-mapped on a dual-stack listener
    ],
)
def test_tcp_peer_owned_by_another_user(
    owners: PeerOwners,
    proc_owners: PeerOwners,
    uid: int,
    listen: tuple[str, socket.AddressFamily, bool],
    host: str,
) -> None:
    require_root()
    address, family, dual = listen
    with (
        socket.create_server((address, 0), family=family, dualstack_ipv6=dual) as server,
        peer_as(uid, server, host) as conn,
    ):
        assert owners.owner(conn) == uid
        assert proc_owners.owner(conn) == uid
    assert owners.failures == proc_owners.failures == 0


def test_unix_peer_owned_by_another_user(owners: PeerOwners) -> None:
    require_root()
    directory = Path(tempfile.mkdtemp(prefix="srsd-peercred-", dir="/tmp"))
    try:
        directory.chmod(0o755)
        path = directory / "s"
        with socket.socket(socket.AF_UNIX) as server:
            server.bind(str(path))
            path.chmod(0o666)
            server.listen()
            with peer_as(NOBODY, server, "unix") as conn:
                assert owners.owner(conn) == NOBODY
    finally:
        path.unlink(missing_ok=True)
        directory.rmdir()


def test_own_connections(owners: PeerOwners) -> None:
    left, right = socket.socketpair()
    with left, right:
        assert owners.owner(left) == os.geteuid()
    with (
        socket.create_server(("127.0.0.1", 0)) as server,
        socket.create_connection(server.getsockname()),
    ):
        conn, _ = server.accept()
        with conn:
            assert owners.owner(conn) == os.geteuid()
            assert PeerOwners(methods=()).owner(conn) == UNKNOWN_OWNER  # no way to ask


@pytest.mark.parametrize("how", ["close", "reset"])
def test_a_peer_that_closed_is_unknown_never_root(
    owners: PeerOwners, proc_owners: PeerOwners, how: str
) -> None:
    # Closed first by the peer: its socket is FIN-WAIT/TIME-WAIT, for which the kernel
    # reports uid 0; reset: there is no socket at all.
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        conn, _ = server.accept()
        with conn:
            if how == "reset":
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()
            time.sleep(0.05)
            assert owners.owner(conn) == UNKNOWN_OWNER
            assert proc_owners.owner(conn) == UNKNOWN_OWNER


def test_no_socket_with_that_4_tuple(owners: PeerOwners, proc_owners: PeerOwners) -> None:
    # Not on this host: one "remote" user; on loopback: gone, so unknown.
    elsewhere = FourTuple(
        socket.AF_INET, bytes([192, 0, 2, 7]), 40000, bytes([198, 51, 100, 1]), 10001
    )
    gone = FourTuple(socket.AF_INET, bytes([127, 0, 0, 1]), 40000, bytes([127, 0, 0, 1]), 1)
    elsewhere6 = FourTuple(
        socket.AF_INET6,
        socket.inet_pton(socket.AF_INET6, "2001:db8::7"),
        40000,
        socket.inet_pton(socket.AF_INET6, "2001:db8::1"),
        10001,
    )
    for lookup in (owners, proc_owners, PeerOwners(methods=())):
        assert lookup.owner_of(elsewhere) == REMOTE
        assert lookup.owner_of(elsewhere6) == REMOTE
        assert lookup.owner_of(gone) == UNKNOWN_OWNER
    assert owners.failures == proc_owners.failures == 0


def test_lookup_cost_is_one_round_trip(owners: PeerOwners) -> None:
    # Not a speed assertion: the figure for docs/reliability.md, and a check that many
    # lookups in a row on one netlink socket stay right (stale replies are skipped).
    with (
        socket.create_server(("127.0.0.1", 0)) as server,
        socket.create_connection(server.getsockname()),
    ):
        conn, _ = server.accept()
        with conn:
            started = time.perf_counter()
            results = {owners.owner(conn) for _ in range(2000)}
            took = (time.perf_counter() - started) / 2000
    assert results == {os.geteuid()}
    print(f"\nsock_diag peer lookup: {took * 1e6:.1f} us per connection")


# -- the byte formats ----------------------------------------------------------------------------

PEER_TUPLE = FourTuple(socket.AF_INET, bytes([127, 0, 0, 1]), 45678, bytes([127, 0, 0, 1]), 10001)


def diag_message(
    peer: FourTuple,
    seq: int,
    *,
    uid: int = 1000,
    state: int = 1,
    inode: int = 1234,
    sport: int | None = None,
) -> bytes:
    """An inet_diag_msg reply as the kernel sends it, built from the C layout."""
    body = struct.pack(
        "=BBBB2s2s16s16sI8sIIIII",
        peer.family,
        state,
        0,
        0,
        (peer.peer_port if sport is None else sport).to_bytes(2, "big"),
        peer.local_port.to_bytes(2, "big"),
        peer.peer_addr.ljust(16, b"\0"),
        peer.local_addr.ljust(16, b"\0"),
        0,
        b"\0" * 8,
        0,
        0,
        0,
        uid,
        inode,
    )
    return struct.pack("=IHHII", 16 + len(body), 20, 0, seq, 0) + body


def error_message(seq: int, error: int) -> bytes:
    body = struct.pack("=i", -error) + b"\0" * 16
    return struct.pack("=IHHII", 16 + len(body), 2, 0, seq, 0) + body


def test_diag_request_layout() -> None:
    request = owner_wire.diag_request(PEER_TUPLE, 7)
    assert len(request) == owner_wire.REQUEST_SIZE == 72
    length, kind, flags, seq, _ = struct.unpack_from("=IHHII", request)
    assert (length, kind, flags, seq) == (72, 20, 1, 7)
    family, protocol, _, _, states = struct.unpack_from("=BBBBI", request, 16)
    assert (family, protocol, states) == (socket.AF_INET, socket.IPPROTO_TCP, 0xFFFFFFFF)
    sport, dport = struct.unpack_from(">HH", request, 24)
    assert (sport, dport) == (45678, 10001)  # the peer's own port is the source
    assert request[28:32] == bytes([127, 0, 0, 1]) and request[44:48] == bytes([127, 0, 0, 1])
    assert request[-8:] == b"\xff" * 8  # INET_DIAG_NOCOOKIE


def test_diag_replies() -> None:
    parse = owner_wire.parse_diag_reply
    assert parse(diag_message(PEER_TUPLE, 5, uid=65534), PEER_TUPLE, 5) == 65534
    assert (
        parse(diag_message(PEER_TUPLE, 5, uid=0, state=6, inode=0), PEER_TUPLE, 5) == UNKNOWN_OWNER
    )
    assert parse(diag_message(PEER_TUPLE, 5, inode=0), PEER_TUPLE, 5) == UNKNOWN_OWNER  # orphan
    assert parse(error_message(5, 2), PEER_TUPLE, 5) == ABSENT  # ENOENT
    assert parse(diag_message(PEER_TUPLE, 4), PEER_TUPLE, 5) is None  # stale
    stale_then_right = diag_message(PEER_TUPLE, 4, uid=1) + diag_message(PEER_TUPLE, 5, uid=2)
    assert parse(stale_then_right, PEER_TUPLE, 5) == 2
    with pytest.raises(PeerError, match="another socket"):
        parse(diag_message(PEER_TUPLE, 5, sport=1), PEER_TUPLE, 5)
    with pytest.raises(PeerError, match="error 1 "):
        parse(error_message(5, 1), PEER_TUPLE, 5)
    with pytest.raises(PeerError, match="out of bounds"):
        parse(diag_message(PEER_TUPLE, 5)[:-1], PEER_TUPLE, 5)
    with pytest.raises(PeerError, match="unexpected"):
        parse(struct.pack("=IHHII", 20, 99, 0, 5, 0) + b"\0" * 4, PEER_TUPLE, 5)


def test_proc_net_tcp_lines() -> None:
    header = (
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt"
        "   uid  timeout inode\n"
    )
    mine = (
        "   3: 0100007F:B26E 0100007F:2711 01 00000000:00000000 00:00000000 00000000 "
        " 65534        0 998877 1 0000000000000000 20 4 30 10 -1\n"
    )
    waiting = (
        "   4: 0100007F:B26E 0100007F:2711 06 00000000:00000000 03:00001770 00000000 "
        "    0        0 0 3 0000000000000000\n"
    )
    if os.uname().machine not in ("x86_64", "aarch64"):
        pytest.skip("the lines above are little-endian")
    assert owner_wire.parse_proc_net_tcp(header + mine, PEER_TUPLE) == 65534
    assert owner_wire.parse_proc_net_tcp(header + waiting, PEER_TUPLE) == UNKNOWN_OWNER
    # a TIME-WAIT line of the same 4-tuple, before or after the live one (loopback reuse)
    assert owner_wire.parse_proc_net_tcp(header + waiting + mine, PEER_TUPLE) == 65534
    assert owner_wire.parse_proc_net_tcp(header + mine + waiting, PEER_TUPLE) == 65534
    assert owner_wire.parse_proc_net_tcp(header, PEER_TUPLE) == ABSENT
    with pytest.raises(PeerError):
        owner_wire.parse_proc_net_tcp(header + mine[:60], PEER_TUPLE)


def test_ucred() -> None:
    assert owner_wire.parse_ucred(struct.pack("=iII", 42, 103, 106)) == 103
    with pytest.raises(PeerError):
        owner_wire.parse_ucred(b"\0" * 11)


@settings(max_examples=500, deadline=None)
@given(
    data=st.binary(max_size=600),
    seq=st.integers(0, 2**32 - 1),
    prefix=st.lists(st.sampled_from([2, 3, 20]) | st.integers(0, 65535), max_size=3),
)
def test_any_netlink_bytes_give_an_owner_none_or_peer_error(
    data: bytes, seq: int, prefix: list[int]
) -> None:
    # Framed messages with arbitrary bodies too, so the parser gets past the header.
    framed = b"".join(
        struct.pack("=IHHII", 16 + len(data), kind, 0, seq, 0) + data for kind in prefix
    )
    for blob in (data, framed, framed + data):
        try:
            got = owner_wire.parse_diag_reply(blob, PEER_TUPLE, seq)
        except PeerError:
            continue
        assert got is None or got in (UNKNOWN_OWNER, ABSENT) or (isinstance(got, int) and got >= 0)


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=400))
def test_any_proc_text_gives_an_owner_or_peer_error(text: str) -> None:
    line = "   1: 0100007F:B26E 0100007F:2711 " + text
    for blob in (text, line):
        try:
            got = owner_wire.parse_proc_net_tcp(blob, PEER_TUPLE)
        except PeerError:
            continue
        assert got in (UNKNOWN_OWNER, ABSENT) or (isinstance(got, int) and got >= 0)
