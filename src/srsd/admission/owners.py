# Who is on the other end of a connection: the local uid owning each peer socket.
"""Learn which local user owns the peer of an accepted connection.

srsd shares its connections between users (:mod:`srsd.admission.rule`) and may admit only some
(``allowed_users``). The owner of a peer is:

* on a unix socket, the peer's uid from ``SO_PEERCRED`` (Linux);
* on TCP, the uid owning the peer's socket in the kernel's socket table, found by its exact
  4-tuple: with one Linux ``sock_diag`` netlink request (``NETLINK_SOCK_DIAG``,
  ``inet_diag_req_v2``; what ``ss -e`` prints as ``uid:``), or, where sock_diag is missing,
  by reading ``/proc/net/tcp`` and ``/proc/net/tcp6``;
* :data:`REMOTE` when the kernel has no such socket and the peer address is not loopback:
  the peer is on another host (or in another network namespace), and all of those count as
  one user;
* :data:`UNKNOWN_OWNER` when it cannot be told: the peer closed its socket already (an orphaned
  or TIME-WAIT socket has no owner: the kernel reports uid 0 for those, which must never
  pass for root), the lookup failed, or the platform offers no way.

The byte formats are pure functions (:func:`diag_request`, :func:`parse_diag_reply`,
:func:`parse_proc_net_tcp`, :func:`parse_ucred`) that validate everything they read and
never raise on bad bytes except :class:`PeerError`; :class:`PeerOwners` does the I/O: one
netlink round trip per connection (the kernel answers within the ``sendto``, so the reply
is read without waiting and the event loop never blocks).
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import socket
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Final

#: The owner of a peer: a uid, or :data:`REMOTE` / :data:`UNKNOWN_OWNER`.
Owner = int | str
#: Peers on other hosts (or network namespaces), all counted as one user.
REMOTE: Final = "remote"
#: Peers whose owner cannot be told (gone already, or no way to ask).
UNKNOWN_OWNER: Final = "unknown"
#: What the socket-table parsers return when no socket has the 4-tuple (never an owner).
ABSENT: Final = "absent"

NETLINK_SOCK_DIAG: Final = getattr(socket, "NETLINK_SOCK_DIAG", 4)
SOCK_DIAG_BY_FAMILY: Final = 20
NLMSG_ERROR: Final = 2
NLMSG_DONE: Final = 3
NLM_F_REQUEST: Final = 0x1
#: inet_diag_req_v2.id.idiag_cookie meaning "any socket" (INET_DIAG_NOCOOKIE).
NO_COOKIE: Final = 0xFFFFFFFF
#: TCP states (include/net/tcp_states.h) in which a peer socket still has its owner.
TCP_ESTABLISHED: Final = 1
TCP_CLOSE_WAIT: Final = 8
OWNED_STATES: Final = frozenset({TCP_ESTABLISHED, TCP_CLOSE_WAIT})
#: Bytes read from the netlink socket at once (one reply is 72 + 16 bytes plus attributes).
DIAG_RECEIVE: Final = 8192
#: Netlink messages looked at per lookup at most (stale replies of earlier lookups too).
DIAG_MESSAGES: Final = 8
#: /proc/net/tcp{,6} bytes read at most per lookup (about 150 bytes per socket).
PROC_LIMIT: Final = 16 << 20

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
# inet_diag_sockid: sport, dport (big-endian), src[16], dst[16], if, cookie[2] (host order)
_SOCKID = struct.Struct("=2s2s16s16sI8s")
_REQ_HEAD = struct.Struct("=BBBBI")  # family, protocol, ext, pad, states
# inet_diag_msg: family, state, timer, retrans, id, expires, rqueue, wqueue, uid, inode
_MSG = struct.Struct("=BBBB" + _SOCKID.format[1:] + "IIIII")
_ERRNO = struct.Struct("=i")
_UCRED = struct.Struct("=iII")  # pid, uid, gid
_ALL_STATES = 0xFFFFFFFF
_V4_MAPPED = bytes(10) + b"\xff\xff"
REQUEST_SIZE: Final = _NLMSGHDR.size + _REQ_HEAD.size + _SOCKID.size  # 72


class PeerError(Exception):
    """Bytes that are not a well-formed answer (a broken or unexpected reply)."""


@dataclass(frozen=True, slots=True)
class FourTuple:
    """A TCP connection seen from the *peer's* socket: its own address and the remote one.

    Addresses are packed (4 bytes for IPv4, 16 for IPv6, IPv4-mapped IPv6 included).
    """

    family: int  # socket.AF_INET or socket.AF_INET6
    peer_addr: bytes
    peer_port: int
    local_addr: bytes
    local_port: int

    @classmethod
    def of(cls, conn: socket.socket) -> FourTuple:
        """The 4-tuple of an accepted TCP connection ``conn`` (OSError if not connected)."""
        family = conn.family
        peer, local = conn.getpeername(), conn.getsockname()
        return cls(
            family,
            socket.inet_pton(family, peer[0]),
            int(peer[1]),
            socket.inet_pton(family, local[0]),
            int(local[1]),
        )

    def ipv4(self) -> FourTuple | None:
        """The same connection in IPv4 terms: itself for IPv4, the unmapped addresses of an
        IPv4-mapped IPv6 one, None for a real IPv6 connection."""
        if self.family == socket.AF_INET:
            return self
        if self.peer_addr[:12] == self.local_addr[:12] == _V4_MAPPED:
            return FourTuple(
                socket.AF_INET,
                self.peer_addr[12:],
                self.peer_port,
                self.local_addr[12:],
                self.local_port,
            )
        return None

    @property
    def loopback(self) -> bool:
        """Whether the peer address is a loopback address (IPv4-mapped too)."""
        address = ipaddress.ip_address(self.peer_addr)
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return address.is_loopback


def diag_request(peer: FourTuple, seq: int) -> bytes:
    """The sock_diag request for the peer's own socket (local = the peer's address)."""
    protocol_head = _REQ_HEAD.pack(peer.family, socket.IPPROTO_TCP, 0, 0, _ALL_STATES)
    sockid = _SOCKID.pack(
        peer.peer_port.to_bytes(2, "big"),
        peer.local_port.to_bytes(2, "big"),
        peer.peer_addr.ljust(16, b"\0"),
        peer.local_addr.ljust(16, b"\0"),
        0,
        struct.pack("=II", NO_COOKIE, NO_COOKIE),
    )
    header = _NLMSGHDR.pack(REQUEST_SIZE, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, seq & 0xFFFFFFFF, 0)
    return header + protocol_head + sockid


def parse_diag_reply(data: bytes, peer: FourTuple, seq: int) -> Owner | None:
    """The owner in one netlink datagram answering :func:`diag_request` ``seq``.

    Returns the uid, :data:`UNKNOWN_OWNER` (the socket exists but has no owner any more),
    :data:`ABSENT` (the kernel has no such socket: ``ENOENT``), or None when the datagram
    answers another request (a stale reply: read on). Raises :class:`PeerError` for anything
    malformed or unexpected, the kernel's other errors included. Looks at no more than
    :data:`DIAG_MESSAGES` messages and never reads outside ``data``.
    """
    offset = 0
    for _ in range(DIAG_MESSAGES):
        if len(data) - offset < _NLMSGHDR.size:
            break
        length, kind, _flags, got_seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size or length > len(data) - offset:
            raise PeerError(f"netlink message length {length} out of bounds")
        body = data[offset + _NLMSGHDR.size : offset + length]
        offset += (length + 3) & ~3  # NLMSG_ALIGN
        if got_seq != seq & 0xFFFFFFFF:
            continue  # an answer to an earlier request
        if kind == NLMSG_ERROR:
            if len(body) < _ERRNO.size:
                raise PeerError("short netlink error message")
            (error,) = _ERRNO.unpack_from(body)
            if -error == errno.ENOENT:  # no socket with that 4-tuple on this host
                return ABSENT
            raise PeerError(f"sock_diag error {-error} ({os.strerror(-error)})")
        if kind == NLMSG_DONE:
            return ABSENT
        if kind != SOCK_DIAG_BY_FAMILY or len(body) < _MSG.size:
            raise PeerError(f"unexpected netlink message type {kind}, {len(body)} bytes")
        family, state, _t, _r, sport, dport, src, dst, _if, _c, _e, _rq, _wq, uid, inode = (
            _MSG.unpack_from(body)
        )
        same_family = family == peer.family
        if (int.from_bytes(sport, "big"), int.from_bytes(dport, "big")) != (
            peer.peer_port,
            peer.local_port,
        ) or (
            same_family
            and (src[: len(peer.peer_addr)], dst[: len(peer.local_addr)])
            != (peer.peer_addr, peer.local_addr)
        ):
            raise PeerError("sock_diag answered for another socket")
        if state not in OWNED_STATES or inode == 0:
            return UNKNOWN_OWNER  # closed by its process: TIME-WAIT and orphans report uid 0
        return int(uid)
    return None


def _proc_hex(address: bytes, port: int) -> str:
    """``ADDR:PORT`` as /proc/net/tcp prints it: 32-bit words, each in host byte order,
    in upper-case hex (``0100007F:2711`` for 127.0.0.1:10001 on little-endian hosts)."""
    words = [address[i : i + 4] for i in range(0, len(address), 4)]
    if sys.byteorder == "little":
        words = [word[::-1] for word in words]
    return f"{b''.join(words).hex().upper()}:{port:04X}"


def parse_proc_net_tcp(text: str, peer: FourTuple) -> Owner:
    """The owner of the peer's socket in the text of ``/proc/net/tcp`` (IPv4 addresses) or
    ``/proc/net/tcp6`` (IPv6); :data:`ABSENT` when no line has its 4-tuple. A TIME-WAIT or
    orphaned socket (inode 0) is :data:`UNKNOWN_OWNER`, unless a live socket of the same
    4-tuple is listed too (on loopback a new connection may reuse a TIME-WAIT 4-tuple, and
    both lines can be seen in one read); a matching line that does not parse is
    :class:`PeerError`."""
    wanted = (
        f" {_proc_hex(peer.peer_addr, peer.peer_port)} "
        f"{_proc_hex(peer.local_addr, peer.local_port)} "
    )
    owner: Owner = ABSENT
    found = text.find(wanted)
    while found >= 0:
        line_end = text.find("\n", found)
        end = len(text) if line_end < 0 else line_end
        fields = text[found:end].split()
        try:
            state, uid, inode = int(fields[2], 16), int(fields[6]), int(fields[8])
        except (ValueError, IndexError):
            raise PeerError(f"unexpected /proc/net/tcp line: {fields[:9]}") from None
        if state in OWNED_STATES and inode != 0:
            return uid
        owner = UNKNOWN_OWNER
        found = text.find(wanted, end)
    return owner


def parse_ucred(raw: bytes) -> int:
    """The uid in a ``struct ucred`` as ``getsockopt(SO_PEERCRED)`` returns it."""
    if len(raw) != _UCRED.size:
        raise PeerError(f"SO_PEERCRED gave {len(raw)} bytes, expected {_UCRED.size}")
    return int(_UCRED.unpack(raw)[1])


class PeerOwners:
    """Finds the owner of accepted connections; opened once per server, then cheap.

    ``method`` says how TCP peers are looked up: ``sock_diag``, ``proc`` or ``none``
    (every TCP peer then counts as :data:`REMOTE`, or :data:`UNKNOWN_OWNER` on loopback). The
    method is chosen at start by looking up a loopback connection of our own, so a kernel
    without sock_diag (or a sandbox without ``AF_NETLINK``) falls back on its own.
    """

    def __init__(self, *, methods: tuple[str, ...] = ("sock_diag", "proc")) -> None:
        self._diag: socket.socket | None = None
        self._seq = 0
        self.method = "none"
        self.failures = 0  # lookups that failed unexpectedly (a broken reply, an error)
        for method in methods:
            if method == "sock_diag":
                with contextlib.suppress(OSError, AttributeError):  # AttributeError: no netlink
                    self._diag = socket.socket(
                        socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG
                    )
                    self._diag.setblocking(False)
                    self._diag.connect((0, 0))  # the kernel: nobody else may answer
            self.method = method
            found = self._probe()
            self.failures = 0
            if found:
                return
            self.close()
        self.method = "none"

    def _probe(self) -> bool:
        """Whether the current method finds our own uid for a loopback connection (numeric
        addresses only: no name lookup, which may need modules a dropped user cannot read)."""
        try:
            with (
                socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server,
                socket.socket(socket.AF_INET, socket.SOCK_STREAM) as client,
            ):
                server.bind(("127.0.0.1", 0))
                server.listen(1)
                client.settimeout(1.0)
                client.connect(server.getsockname())
                conn, _ = server.accept()
                with conn:
                    return self.owner(conn) == os.geteuid() and self.failures == 0
        except OSError:
            return False

    def close(self) -> None:
        """Release the netlink socket."""
        if self._diag is not None:
            self._diag.close()
            self._diag = None

    def owner(self, conn: socket.socket) -> Owner:
        """The owner of ``conn``'s peer; never raises, never blocks."""
        family = conn.family
        if family == socket.AF_UNIX:
            try:
                return parse_ucred(
                    conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
                )
            except (OSError, AttributeError, PeerError):
                return UNKNOWN_OWNER
        if family not in (socket.AF_INET, socket.AF_INET6):
            return UNKNOWN_OWNER
        try:
            peer = FourTuple.of(conn)
        except (OSError, ValueError):
            return UNKNOWN_OWNER  # reset already
        return self.owner_of(peer)

    def owner_of(self, peer: FourTuple) -> Owner:
        """The owner of the TCP peer socket with ``peer``'s 4-tuple; never raises."""
        try:
            if self.method == "sock_diag":
                found = self._ask_kernel(peer)
            elif self.method == "proc":
                found = self._read_proc(peer)
            else:
                found = ABSENT  # no way to ask: only the address can tell
        except (OSError, PeerError):
            self.failures += 1
            return UNKNOWN_OWNER
        if found == ABSENT:  # no socket of this host has that 4-tuple
            return UNKNOWN_OWNER if peer.loopback else REMOTE  # gone already, or another host
        return found

    def _ask_kernel(self, peer: FourTuple) -> Owner:
        diag = self._diag
        if diag is None:
            raise PeerError("no sock_diag socket")
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        diag.send(diag_request(peer, self._seq))
        for _ in range(DIAG_MESSAGES):  # stale replies of earlier lookups are skipped
            # The kernel answers within send(): no reply now is BlockingIOError (OSError).
            found = parse_diag_reply(diag.recv(DIAG_RECEIVE), peer, self._seq)
            if found is not None:
                return found
        raise PeerError("no sock_diag reply")

    def _read_proc(self, peer: FourTuple) -> Owner:
        # An IPv4 peer of a dual-stack listener may own an IPv4 socket or an IPv6 one.
        v4 = peer.ipv4()
        tables = [] if v4 is None else [("tcp", v4)]
        if peer.family == socket.AF_INET6:
            tables.append(("tcp6", peer))
        for name, tuple_ in tables:
            with Path(f"/proc/net/{name}").open("rb") as table:
                text = table.read(PROC_LIMIT).decode("ascii", errors="replace")
            found = parse_proc_net_tcp(text, tuple_)
            if found != ABSENT:
                return found
        return ABSENT
