# atheris harness for the peer-owner parsers: any netlink reply, any /proc/net/tcp text.
"""Coverage-guided fuzzing of :mod:`srsd.admission.owners`'s byte parsers (``fuzz/README.md``).

The input's last bytes choose a sequence number and the 4-tuple asked about; the rest is
handed to :func:`~srsd.admission.owners.parse_diag_reply` as a netlink datagram (raw, and wrapped
after a well-formed header so that the message bodies are reached) and, decoded, to
:func:`~srsd.admission.owners.parse_proc_net_tcp`. Asserted: only :class:`PeerError` escapes; the
result is a uid (0 to 2^32 - 1), ``unknown``, ``absent`` or None (netlink: another
request's reply), and a uid from netlink only when the socket's two ports are in the bytes.
Importable without atheris (the tests import it to replay inputs).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import sys

try:
    import atheris
except ImportError:  # replaying inputs in the tests needs no atheris
    atheris = None

with atheris.instrument_imports() if atheris else contextlib.nullcontext():
    from srsd.admission import owners

TUPLES = [
    owners.FourTuple(socket.AF_INET, bytes([127, 0, 0, 1]), 45678, bytes([127, 0, 0, 1]), 10001),
    owners.FourTuple(socket.AF_INET6, bytes(15) + b"\1", 40000, bytes(15) + b"\1", 10002),
]
_HEADER = struct.Struct("=IHHII")
SEEDS = [
    # an exact reply: uid 65534, established, inode 1234; then seq 5, tuple 0
    _HEADER.pack(88, 20, 0, 5, 0)
    + struct.pack(
        "=BBBB2s2s16s16sI8sIIIII",
        socket.AF_INET,
        1,
        0,
        0,
        (45678).to_bytes(2, "big"),
        (10001).to_bytes(2, "big"),
        bytes([127, 0, 0, 1]).ljust(16, b"\0"),
        bytes([127, 0, 0, 1]).ljust(16, b"\0"),
        0,
        b"\0" * 8,
        0,
        0,
        0,
        65534,
        1234,
    )
    + b"\x05\x00\x00\x00\x00",
    _HEADER.pack(36, 2, 0, 1, 0) + struct.pack("=i", -2) + bytes(16) + b"\x01\x00\x00\x00\x00",
    b"   1: 0100007F:B26E 0100007F:2711 01 00000000:00000000 00:00000000 00000000  1000 "
    b"0 555 1\x05\x00\x00\x00\x00",
]


def check(result: object, *, may_be_none: bool) -> None:
    if result is None and may_be_none:
        return
    if result in (owners.UNKNOWN_OWNER, owners.ABSENT):
        return
    if not isinstance(result, int) or not 0 <= result < 2**32:
        raise AssertionError(f"not an owner: {result!r}")


def test_one_input(data: bytes) -> None:
    """One fuzz input: the bytes, then (from the end) the tuple's index and a seq."""
    if len(data) < 5:
        return
    peer = TUPLES[data[-1] % len(TUPLES)]
    seq = int.from_bytes(data[-5:-1], "little")
    body = data[:-5]
    for blob in (body, _HEADER.pack(16 + len(body), 20, 0, seq, 0) + body):
        try:
            got = owners.parse_diag_reply(blob, peer, seq)
        except owners.PeerError:
            continue
        check(got, may_be_none=True)
        ports = struct.pack(">HH", peer.peer_port, peer.local_port)
        if isinstance(got, int) and ports not in blob:
            raise AssertionError(f"uid {got} from a reply about another socket")
    try:
        got = owners.parse_proc_net_tcp(body.decode("ascii", errors="replace"), peer)
    except owners.PeerError:
        return
    check(got, may_be_none=False)


if __name__ == "__main__":
    from common import run

    run(test_one_input, SEEDS)
    sys.exit(0)
