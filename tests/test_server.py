# In-process tests of the trio tcp_table server: replies, framing, limits, time-outs, signals.
"""``srsd.serve.server.Server`` run inside the test's own trio loop on free loopback ports.

Each test binds a real :class:`Server` (``bind`` then ``nursery.start(serve)``), talks to it
over TCP with ``trio.open_tcp_stream`` and looks at its counters and log records. Every wait
is bounded by :data:`TIMEOUT`; nothing sleeps to synchronise (pauses only pace a client).
The expected SRS addresses are computed here from the secret (HMAC-SHA1, base64url), not
with srsd's codec. Real child processes (signals from outside, exit codes, start-up
failures) are in ``test_serve_process.py``.
"""

from __future__ import annotations

import fcntl
import logging
import os
import random
import signal
import socket
import struct
import termios
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from srsd.config.settings import Settings
from srsd.serve.answers import BAD_REQUEST_LOG_RATE
from srsd.serve.loop import Connection
from srsd.serve.server import Server
from srsd.srs.codec import Codec
from srsd.srs.policy import Decision, Role
from tests.harness.inprocess import (
    DAY,
    DOMAIN,
    NEW_SECRET,
    SECRET,
    TIMEOUT,
    CapturedLog,
    Client,
    connect_small_window,
    forward_replies,
    make_settings,
    send_until_closed,
    serving,
    srs0,
    start,
    wait_for,
)

# A reply as Postfix accepts it: code, one space, text of printable non-space bytes with every
# "%" starting an upper-case %XX escape, a bare LF.
TOO_LONG = b"500 Address%20too%20long\n"


# -- an independent SRS oracle -------------------------------------------------------------


# -- a running server -----------------------------------------------------------------------


# -- every reply path ------------------------------------------------------------------------


async def test_forward_reply_paths(tmp_path: Path, log: CapturedLog) -> None:
    async with serving(tmp_path) as srv:
        c = await srv.connect(Role.FORWARD)
        t0 = time.time()
        assert await c.ask(b"alice@example.org") in forward_replies(
            b"alice", b"example.org", t0, time.time()
        )
        ours = srs0(b"bob", b"example.net", time.time())
        cases = [
            (b'""', b"500 null%20sender\n"),
            (b"<>", b"500 null%20sender\n"),
            (b"alice", b"500 no%20domain\n"),
            (b"alice@", b"500 no%20domain\n"),
            (b"bob@forwarder.test", b"500 local%20domain\n"),
            (b"bob@FORWARDER.Test", b"500 local%20domain\n"),
            (b"carol@excluded.example", b"500 excluded%20domain\n"),
            (b"carol@EXCLUDED.example", b"500 excluded%20domain\n"),
            # our own SRS address, reached under another domain: not wrapped again
            (ours.replace(b"@forwarder.test", b"@other.example"), b"500 already%20rewritten\n"),
            (b"SRS1=xx@other.example", b"500 No%20host%20in%20SRS1%20address.\n"),
            (b"SRS1=xx=hop.example@other.example", b"500 No%20user%20in%20SRS1%20address.\n"),
        ]
        for key, expected in cases:
            assert await c.ask(key) == expected, key
        # someone else's SRS0 becomes an SRS1 pointing at its host
        foreign = await c.ask(b"SRS0=abcd=AA=orig.example=user@hop.example")
        assert foreign.startswith(b"200 SRS1=")
        assert foreign.endswith(b"=hop.example==abcd=AA=orig.example=user@forwarder.test\n")
        lookups = srv.server.lookups.counts
        assert lookups[("tcp_table", "forward", "rewritten")] == 2
        assert lookups[("tcp_table", "forward", "null sender")] == 2
        assert lookups[("tcp_table", "forward", "malformed")] == 2
        assert sum(lookups.values()) == len(cases) + 2


async def test_reverse_reply_paths(tmp_path: Path, log: CapturedLog) -> None:
    now = time.time()
    async with serving(tmp_path) as srv:
        c = await srv.connect(Role.REVERSE)
        good = srs0(b"alice", b"example.org", now)
        assert await c.ask(good) == b"200 alice@example.org\n"
        # smtpd asks lower-cased: the hash still matches
        assert await c.ask(good.lower()) == b"200 alice@example.org\n"
        wrapped = Codec([SECRET], DOMAIN.encode()).forward(
            b"SRS0=abcd=AA=orig.example=user@hop.example", now
        )
        assert await c.ask(wrapped) == b"200 SRS0=abcd=AA=orig.example=user@hop.example\n"
        cases = [
            (b"alice@example.org", b"500 Not%20an%20SRS%20address.\n"),
            (
                srs0(b"alice", b"example.org", now, b"someone-else"),
                b"500 Hash%20invalid%20in%20SRS%20address.\n",
            ),
            (
                srs0(b"alice", b"example.org", now - 30 * DAY),
                b"500 Time%20stamp%20out%20of%20date.\n",
            ),
            (b"SRS0=abcd@forwarder.test", b"500 No%20timestamp%20in%20SRS0%20address.\n"),
            (
                b"SRS0=abcd=!!=example.org=alice@forwarder.test",
                b"500 Bad%20time%20stamp%20in%20SRS0%20address.\n",
            ),
            (
                b"SRS0=ab=AA=example.org=alice@forwarder.test",
                b"500 Hash%20too%20short%20in%20SRS%20address.\n",
            ),
        ]
        for key, expected in cases:
            assert await c.ask(key) == expected, key
        lookups = srv.server.lookups.counts
        assert lookups[("tcp_table", "reverse", "rewritten")] == 3
        assert lookups[("tcp_table", "reverse", "not SRS")] == 1
        assert lookups[("tcp_table", "reverse", "bad hash")] == 2
        assert lookups[("tcp_table", "reverse", "expired")] == 1
        assert lookups[("tcp_table", "reverse", "malformed")] == 2


async def test_bad_requests_answer_500_and_keep_the_connection(tmp_path: Path) -> None:
    bad = [
        (b"put alice@example.org alice", b"500 Invalid%20request,%20expected%20'get%20KEY'\n"),
        (b"GET alice@example.org", b"500 Invalid%20request,%20expected%20'get%20KEY'\n"),
        (b"", b"500 Invalid%20request,%20expected%20'get%20KEY'\n"),
        (b"get", b"500 Empty%20key%20in%20request\n"),
        (b"get ", b"500 Empty%20key%20in%20request\n"),
        (b"get a%zz@example.org", b"500 Invalid%20%25-escape%20in%20request\n"),
        (b"get a%4@example.org", b"500 Invalid%20%25-escape%20in%20request\n"),
        (b"get a%00b@example.org", b"500 NUL%20byte%20in%20address\n"),
        (b"get a\0b@example.org", b"500 NUL%20byte%20in%20address\n"),
    ]
    async with serving(tmp_path) as srv:
        for role in Role:
            c = await srv.connect(role)
            for line, expected in bad:
                await c.send(line + b"\n")
                assert await c.line() == expected, line
                # the same connection answers the next request
                reply = await c.ask(b"alice@example.org")
                assert reply.startswith(b"200 " if role is Role.FORWARD else b"500 Not")
            await c.aclose()
        # The NUL keys are lookups the policy refuses, as on every endpoint (bad address).
        for role in Role:
            assert (
                srv.server.lookups.counts[("tcp_table", role.value, "bad request")] == len(bad) - 2
            )
            assert srv.server.lookups.counts[("tcp_table", role.value, "bad address")] == 2


class ExplodingPolicy:
    """A policy with a bug: every lookup raises."""

    def forward(self, sender: bytes, now: float) -> Decision:
        raise RuntimeError("policy bug")

    def reverse(self, recipient: bytes, now: float) -> Decision:
        raise KeyError("policy bug")


async def test_internal_error_is_a_temporary_failure(tmp_path: Path, log: CapturedLog) -> None:
    async with serving(tmp_path) as srv:
        srv.server.lookups.policy = ExplodingPolicy()  # type: ignore[assignment]
        for role in Role:
            c = await srv.connect(role)
            assert await c.ask(b"alice@example.org") == b"400 srsd%20internal%20error\n"
            # the server keeps going: the next request is answered too
            assert await c.ask(b"bob@example.org") == b"400 srsd%20internal%20error\n"
            assert srv.server.lookups.counts[("tcp_table", role.value, "error")] == 2
        errors = [r for r in log.records if r.levelno == logging.ERROR]
        assert len(errors) == 4
        assert errors[0].getMessage() == "forward <alice@example.org>: internal error"
        assert errors[0].exc_info is not None  # the traceback is logged
        assert "RuntimeError: policy bug" in log.text()


async def test_replies_are_always_well_formed(tmp_path: Path) -> None:
    """Random keys, raw and %-encoded, SRS-looking or not: every reply is one valid line."""
    rng = random.Random(20240521)
    safe = set(range(0x21, 0x7F)) - {0x25}
    pieces = [
        b"SRS0=",
        b"SRS1=",
        b"srs0+",
        b"SRS0-",
        b"=",
        b"==",
        b"@",
        b"%",
        b'"',
        b"\\",
        b"example.org",
        b"forwarder.test",
        b"\xc3\xa9",
        b"\xff",
        b"\r",
        b" ",
    ]
    keys = []
    for _ in range(1500):
        raw = b"".join(
            rng.choice(pieces) if rng.random() < 0.3 else bytes((rng.randrange(1, 256),))
            for _ in range(rng.randrange(1, 40))
        )
        hexes = ("%02X", "%02x")
        keys.append(
            b"".join(bytes((b,)) if b in safe else (rng.choice(hexes) % b).encode() for b in raw)
        )
        keys.append(raw.replace(b"\n", b""))  # raw bytes are taken as they are
    async with serving(tmp_path) as srv:
        for role in Role:
            c = await srv.connect(role)
            await c.send(b"".join(b"get " + key + b"\n" for key in keys))
            replies = await c.lines(len(keys))  # check_reply() checks each
            assert {r[:1] for r in replies} <= {b"2", b"5"}
            assert c.buffer == b""


# -- framing -----------------------------------------------------------------------------------


async def test_pipelined_requests_are_answered_in_order(tmp_path: Path) -> None:
    count = 600
    keys = [b"user%d@example.org" % i if i % 3 else b"user%d" % i for i in range(count)]
    async with serving(tmp_path) as srv:
        c = await srv.connect(Role.FORWARD)
        t0 = time.time()
        await c.send(b"".join(b"get " + key + b"\n" for key in keys))
        replies = await c.lines(count)
        t1 = time.time()
        for i, reply in enumerate(replies):
            if i % 3:
                assert reply in forward_replies(b"user%d" % i, b"example.org", t0, t1), i
            else:
                assert reply == b"500 no%20domain\n", i
        assert sum(srv.server.lookups.counts.values()) == count


class Recorder:
    """The accepted socket, with every recv() size noted (trio waits on its fileno())."""

    def __init__(self, sock: socket.socket, sizes: list[int]) -> None:
        self._sock = sock
        self._sizes = sizes

    def recv(self, size: int) -> bytes:
        data = self._sock.recv(size)
        self._sizes.append(len(data))
        return data

    def __getattr__(self, name: str) -> object:  # send, fileno, shutdown, close, ...
        return getattr(self._sock, name)


class ObservedServer(Server):
    """A server that notes, per accepted connection, its socket, TCP_NODELAY and the
    receive sizes."""

    def __init__(self, settings: Settings, reload: Callable[[], Settings]) -> None:
        super().__init__(settings, reload)
        self.sockets: list[socket.socket] = []
        self.nodelay: list[int] = []
        self.received: list[int] = []
        admit = self.gate.admit

        def observe(conn: Connection, now: float) -> bool:
            self.sockets.append(conn.sock)
            self.nodelay.append(conn.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            conn.sock = Recorder(conn.sock, self.received)  # type: ignore[assignment]
            return admit(conn, now)

        self.gate.admit = observe  # type: ignore[method-assign]


async def test_requests_dribbled_one_byte_at_a_time(tmp_path: Path) -> None:
    payload = b"get alice@example.org\r\nput x\nget a%40b@example.org\nget bob\n"
    async with serving(tmp_path, ObservedServer) as srv:
        c = await srv.connect(Role.FORWARD)
        t0 = time.time()
        for i in range(len(payload)):
            await c.send(payload[i : i + 1])
            await trio.sleep(0.001)  # paces the client, so that the server sees small reads
        replies = await c.lines(4)
        t1 = time.time()
        assert replies[0] in forward_replies(b"alice", b"example.org", t0, t1)
        assert replies[1].startswith(b"500 Invalid%20request")
        assert replies[2] in forward_replies(b"a@b", b"example.org", t0, t1)
        assert replies[3] == b"500 no%20domain\n"
        server = srv.server
        assert isinstance(server, ObservedServer)
        # the server really did get the bytes in small pieces
        assert sum(server.received) == len(payload)
        assert len(server.received) >= len(payload) // 4


async def test_crlf_line_endings(tmp_path: Path) -> None:
    async with serving(tmp_path) as srv:
        c = await srv.connect(Role.FORWARD)
        t0 = time.time()
        await c.send(b"get alice@example.org\r\nget bob\r\nput x\r\n")
        first, second, third = await c.lines(3)
        assert first in forward_replies(b"alice", b"example.org", t0, time.time())
        assert second == b"500 no%20domain\n"
        assert third.startswith(b"500 Invalid%20request")
        # a CR inside a key is part of the key, which no endpoint takes as an address
        assert await c.ask(b"a\rb@example.org") == b"500 Control%20character%20in%20address\n"


async def test_last_request_without_newline_is_answered_at_eof(tmp_path: Path) -> None:
    async with serving(tmp_path) as srv:
        for tail in (b"get bob@example.net", b"get bob@example.net\r"):
            c = await srv.connect(Role.FORWARD)
            t0 = time.time()
            await c.send(b"get alice@example.org\n" + tail)
            with trio.fail_after(TIMEOUT):
                await c.stream.send_eof()
            first, second = await c.lines(2)
            t1 = time.time()
            assert first in forward_replies(b"alice", b"example.org", t0, t1)
            assert second in forward_replies(b"bob", b"example.net", t0, t1)
            assert await c.rest() == b""  # and then the server closes
            await c.aclose()


async def test_too_long_line_is_refused_without_waiting_for_its_newline(tmp_path: Path) -> None:
    async with serving(tmp_path) as srv:
        # 20 KB and no LF at all (the bound: an address of max_request bytes, every byte
        # %-encoded, 12,292 bytes): the reply comes, then EOF
        c = await srv.connect(Role.FORWARD)
        await c.send(b"get " + b"a" * 20_000)
        assert await c.line() == TOO_LONG
        assert await c.rest() == b""
        # a good request in the same write is answered first
        c = await srv.connect(Role.REVERSE)
        await c.send(b"get alice@example.org\nget " + b"b" * 20_000)
        assert await c.lines(2) == [b"500 Not%20an%20SRS%20address.\n", TOO_LONG]
        assert await c.rest() == b""
        assert srv.server.lookups.counts[("tcp_table", "reverse", "bad request")] == 1
        # the server does not read a megabyte first: the reply comes while the client is
        # still sending, and is not lost to a reset when the client goes on sending
        c = await srv.connect(Role.FORWARD)
        async with trio.open_nursery() as nursery:

            async def flood() -> None:
                await c.stream.send_all(b"get " + b"c" * 1_000_000)
                await c.stream.send_eof()

            nursery.start_soon(flood)
            assert await c.line() == TOO_LONG
            assert await c.rest() == b""


async def test_line_limit_boundary(tmp_path: Path) -> None:
    async with serving(tmp_path, max_request=256) as srv:
        c = await srv.connect(Role.REVERSE)
        # an address of max_request bytes is a lookup; one byte more is refused as on
        # every endpoint, and the connection stays
        key = b"x" * (256 - len(b"@example.org")) + b"@example.org"
        assert await c.ask(key) == b"500 Not%20an%20SRS%20address.\n"
        assert await c.ask(b"x" + key) == TOO_LONG
        # the line bound carries an address of max_request bytes with every byte %-encoded
        line = b"get " + b"%C3%A9" * 128
        assert len(line) == 4 + 3 * 256
        await c.send(line + b"\r\n")  # the CR LF ending is not counted
        assert await c.line() == b"500 Not%20an%20SRS%20address.\n"
        await c.send(line + b"%41\n")  # a line longer than that: refused alike, then closed
        assert await c.line() == TOO_LONG
        assert await c.rest() == b""


# -- time-outs --------------------------------------------------------------------------------


# The time-outs run on trio's autojump clock (pytest-trio's ``autojump_clock``): the server
# runs in the test's trio loop and keeps time with ``trio.current_time()``, so waiting out an
# idle time-out takes no real time, and the figures can be as a postmaster sets them. (Each
# client operation stays bounded by TIMEOUT, in the same virtual seconds.)
IDLE = 5.0


async def test_idle_connection_is_closed(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    async with serving(tmp_path, idle_timeout=IDLE) as srv:
        idle = await srv.connect(Role.FORWARD)  # never sends anything
        used = await srv.connect(Role.REVERSE)
        opened = trio.current_time()
        assert await used.ask(b"alice@example.org") == b"500 Not%20an%20SRS%20address.\n"
        assert await idle.rest() == b""
        assert await used.rest() == b""
        assert IDLE <= trio.current_time() - opened < 2 * IDLE
        await wait_for(lambda: len(srv.server.loop.connections) == 0, "both connections to close")


async def test_requests_keep_a_connection_open(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    async with serving(tmp_path, idle_timeout=IDLE) as srv:
        c = await srv.connect(Role.REVERSE)
        for _ in range(8):  # 3 x IDLE in all, each pause shorter than the idle time-out
            assert await c.ask(b"alice@example.org") == b"500 Not%20an%20SRS%20address.\n"
            await trio.sleep(IDLE * 3 / 8)
        assert await c.ask(b"alice@example.org") == b"500 Not%20an%20SRS%20address.\n"


async def test_client_that_never_sends_a_newline_is_closed(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    sent = 0
    async with serving(tmp_path, idle_timeout=IDLE) as srv:
        c = await srv.connect(Role.FORWARD)
        async with trio.open_nursery() as nursery:

            async def trickle() -> None:
                nonlocal sent
                await c.send(b"get alice@")
                try:
                    while True:  # a byte every 20 ms, never a LF
                        await c.stream.send_all(b"x")
                        sent += 1
                        await trio.sleep(0.02)
                except trio.BrokenResourceError:
                    pass

            nursery.start_soon(trickle)
            assert await c.rest(reset_ok=True) == b""  # closed, and nothing answered
            nursery.cancel_scope.cancel()
        # closed by the idle time-out, long before the line limit could have been reached
        assert IDLE / 0.02 - 10 <= sent < srv.settings.max_request
        assert sum(srv.server.lookups.counts.values()) == 0


# -- connections --------------------------------------------------------------------------------


async def test_many_concurrent_connections(tmp_path: Path) -> None:
    count, per_connection = 200, 5
    all_open = trio.Event()
    connected = 0
    peak = 0
    now = time.time()
    async with serving(tmp_path) as srv:

        async def client(i: int) -> None:
            nonlocal connected, peak
            role = Role.FORWARD if i % 2 else Role.REVERSE
            c = await srv.connect(role)
            for j in range(per_connection):
                user, host = b"u%d.%d" % (i, j), b"h%d.example" % i
                if role is Role.FORWARD:
                    t0 = time.time()
                    assert await c.ask(user + b"@" + host) in forward_replies(
                        user, host, t0, time.time()
                    )
                else:
                    decoded = await c.ask(srs0(user, host, now))
                    assert decoded == b"200 " + user + b"@" + host + b"\n"
                if j == 0:
                    connected += 1
                    if connected == count:
                        peak = len(srv.server.loop.connections)
                        all_open.set()
                    with trio.fail_after(TIMEOUT):
                        await all_open.wait()  # every connection is open at the same time
            await c.aclose()

        with trio.fail_after(TIMEOUT * 3):
            async with trio.open_nursery() as nursery:
                for i in range(count):
                    nursery.start_soon(client, i)
        assert peak == count
        assert srv.server.gate.counts["refused full"] == 0
        assert sum(srv.server.lookups.counts.values()) == count * per_connection
        half = count * per_connection // 2
        assert srv.server.lookups.counts[("tcp_table", "forward", "rewritten")] == half
        assert srv.server.lookups.counts[("tcp_table", "reverse", "rewritten")] == half


async def test_accepted_sockets_have_tcp_nodelay(tmp_path: Path) -> None:
    async with serving(tmp_path, ObservedServer) as srv:
        for role in Role:
            c = await srv.connect(role)
            assert (await c.ask(b"bob")).startswith(b"500 ")
        server = srv.server
        assert isinstance(server, ObservedServer)
        assert len(server.nodelay) == 2
        assert all(server.nodelay), server.nodelay


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback (::1) here")
async def test_ipv6_listener_alongside_ipv4(tmp_path: Path) -> None:
    async with serving(tmp_path, listen=["127.0.0.1", "::1"]) as srv:
        families = {(e.role, e.sock.family) for e in srv.endpoints}
        assert families == {
            (role, family) for role in Role for family in (socket.AF_INET, socket.AF_INET6)
        }
        now = time.time()
        for host in ("::1", "127.0.0.1"):
            forward = await srv.connect(Role.FORWARD, host)
            reverse = await srv.connect(Role.REVERSE, host)
            t0 = time.time()
            assert await forward.ask(b"alice@example.org") in forward_replies(
                b"alice", b"example.org", t0, time.time()
            )
            assert await reverse.ask(srs0(b"bob", b"example.net", now)) == b"200 bob@example.net\n"
            await forward.aclose()
            await reverse.aclose()


async def until_steady(value: Callable[[], int]) -> int:
    """Poll ``value`` until it has not changed for 0.4 s (bounded by :data:`TIMEOUT`)."""
    last, steady = -1, 0
    with trio.fail_after(TIMEOUT):
        while steady < 20:
            await trio.sleep(0.02)
            now = value()
            steady = steady + 1 if now == last else 0
            last = now
    return last


def unread(sock: trio.socket.SocketType, request: int) -> int:
    """Bytes in a socket's receive (FIONREAD) or send (TIOCOUTQ) queue (Linux)."""
    return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), request, b"\0" * 4))[0])


async def test_client_that_does_not_read_gets_back_pressure(
    tmp_path: Path, quiet_log: None
) -> None:
    count = 60_000
    payload = b"".join(b"get u%06d@example.org\n" % i for i in range(count))
    async with serving(tmp_path, ObservedServer) as srv:
        server = srv.server
        assert isinstance(server, ObservedServer)
        sock = await connect_small_window(srv.forward)
        async with trio.open_nursery() as nursery:
            tracemalloc.start()
            try:
                before = tracemalloc.get_traced_memory()[0]
                nursery.start_soon(send_until_closed, sock, payload)
                # the server answers until the socket buffers are full, then stops reading
                answered = await until_steady(lambda: sum(server.lookups.counts.values()))
                grown = tracemalloc.get_traced_memory()[0] - before
            finally:
                tracemalloc.stop()
            assert 0 < answered < count // 4
            # every reply is in the kernel's socket buffers (server's send queue, client's
            # receive queue), but for part of the batch being sent
            reply_size = len(b"200 SRS0=abcd=AA=example.org=u000000@forwarder.test\n")
            batch = (16384 // len(b"get u000000@example.org\n") + 1) * reply_size
            queued = unread(sock, termios.FIONREAD) + unread(server.sockets[0], termios.TIOCOUTQ)
            assert answered * reply_size - batch <= queued <= answered * reply_size
            # what is pending sits in socket buffers, not in the server's memory
            assert grown < 1_000_000, f"memory grew by {grown} bytes"
            # once the client reads, every request is answered, in order
            replies, lines = bytearray(), 0
            with trio.fail_after(TIMEOUT * 3):
                while lines < count:
                    data = await sock.recv(1 << 16)
                    assert data, "EOF before every reply came"
                    replies += data
                    lines += data.count(b"\n")
        sock.close()
    got = bytes(replies).splitlines()
    assert len(got) == count
    assert all(line.startswith(b"200 SRS0=") for line in got)
    assert all(
        line.endswith(b"=example.org=u%06d@forwarder.test" % i) for i, line in enumerate(got)
    )


# -- logs ---------------------------------------------------------------------------------------


async def test_log_lines(tmp_path: Path, log: CapturedLog) -> None:
    forged = srs0(b"eve", b"example.org", time.time(), b"forged")
    async with serving(tmp_path) as srv:
        forward = await srv.connect(Role.FORWARD)
        reverse = await srv.connect(Role.REVERSE)
        rewritten = (await forward.ask(b"alice@example.org"))[4:-1].decode()
        for key in (b'""', b"bob", b"bob@forwarder.test"):  # quiet: debug only
            await forward.ask(key)
        await forward.ask(b"carol@excluded.example")
        await reverse.ask(b"dave@example.org")  # not SRS: quiet
        await reverse.ask(rewritten.encode())
        await reverse.ask(forged)
        newline = await forward.ask(b"a%0Ab@x.test")
    assert newline == b"500 Control%20character%20in%20address\n"
    assert log.messages(logging.INFO) == [
        f"forward <alice@example.org> rewritten as <{rewritten}>",
        "forward <carol@excluded.example> not rewritten: excluded domain",
        f"reverse <{rewritten}> rewritten as <alice@example.org>",
        f"reverse <{forged.decode()}> not rewritten: Hash invalid in SRS address.",
        "forward <a\\nb@x.test> not rewritten: Control character in address",
    ]
    assert log.messages(logging.DEBUG) == [
        'forward <""> not rewritten: null sender',
        "forward <bob> not rewritten: no domain",
        "forward <bob@forwarder.test> not rewritten: local domain",
        "reverse <dave@example.org> not rewritten: Not an SRS address.",
    ]
    # a LF in an address cannot start a log line of its own
    lines = log.text().splitlines()
    assert len(lines) == len(log.records)
    assert not [line for line in lines if line.startswith("b@")]


# -- signals and reload (the signal path in this process; exit codes are in test_serve_process) --


async def test_sighup_rotates_secrets_for_open_connections(
    tmp_path: Path, log: CapturedLog
) -> None:
    async with serving(tmp_path, reload_from_files=True) as srv:
        forward = await srv.connect(Role.FORWARD)
        reverse = await srv.connect(Role.REVERSE)
        t0 = time.time()
        old = await forward.ask(b"alice@example.org")
        assert old in forward_replies(b"alice", b"example.org", t0, time.time())
        (tmp_path / "secrets").write_bytes(NEW_SECRET + b"\n" + SECRET + b"\n")
        os.kill(os.getpid(), signal.SIGHUP)
        await wait_for(lambda: srv.server.reloads["ok"] == 1, "the reload")
        assert "configuration reloaded: 2 secret(s), 1 excluded domain(s)" in log.messages()
        # the connections opened before the reload use the new secrets
        t0 = time.time()
        assert await forward.ask(b"alice@example.org") in forward_replies(
            b"alice", b"example.org", t0, time.time(), NEW_SECRET
        )
        assert await reverse.ask(old[4:-1]) == b"200 alice@example.org\n"


async def test_failed_reload_keeps_the_configuration(tmp_path: Path, log: CapturedLog) -> None:
    config = tmp_path / "srsd.toml"
    config.write_text("max_age = 21\n")
    async with serving(tmp_path, reload_from_files=True, config=config) as srv:
        c = await srv.connect(Role.FORWARD)
        (tmp_path / "secrets").write_bytes(NEW_SECRET + b"\n")
        # a config file that is not UTF-8 (say, an editor's Latin-1 comment)
        config.write_bytes(b"# r\xe9glages\nmax_age = 21\n")
        os.kill(os.getpid(), signal.SIGHUP)
        await wait_for(lambda: srv.server.reloads["failed"] == 1, "the failed reload")
        failed = [m for m in log.messages(logging.ERROR) if m.startswith("reload failed")]
        assert len(failed) == 1
        assert str(config) in failed[0]
        t0 = time.time()
        assert await c.ask(b"alice@example.org") in forward_replies(
            b"alice", b"example.org", t0, time.time()
        )  # still the old secret
        config.write_text("max_age = 21\n")
        os.kill(os.getpid(), signal.SIGHUP)
        await wait_for(lambda: srv.server.reloads["ok"] == 1, "the reload")
        t0 = time.time()
        assert await c.ask(b"alice@example.org") in forward_replies(
            b"alice", b"example.org", t0, time.time(), NEW_SECRET
        )


async def test_reload_warns_when_ports_change(tmp_path: Path, log: CapturedLog) -> None:
    async with serving(tmp_path) as srv:
        moved = make_settings(tmp_path, srv.forward + 10, srv.reverse)
        srv.server._reload = lambda: moved
        assert srv.server.reload()
        assert log.messages(logging.WARNING) == ["forward_port changed: restart to apply"]
        assert srv.server.settings.forward_port == srv.forward  # the port in use, still
        c = await srv.connect(Role.FORWARD)  # still listening where it was
        assert (await c.ask(b"bob")).startswith(b"500 ")
        # A second reload with the same change says it again: it is still not applied.
        assert srv.server.reload()
        assert log.messages(logging.WARNING).count("forward_port changed: restart to apply") == 2


async def test_sigterm_drains_and_stops(tmp_path: Path, log: CapturedLog) -> None:
    server, endpoints = await start(tmp_path, shutdown_grace=3600.0)
    port = server.settings.forward_port
    # far shorter than the grace period: serve() returns once its connections are done
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve, endpoints)
            idle = Client(await trio.open_tcp_stream("127.0.0.1", port))
            assert (await idle.ask(b"bob")).startswith(b"500 ")
            # a client that pipelines and does not read holds a reply in flight
            stuck = await connect_small_window(port)
            nursery.start_soon(send_until_closed, stuck, b"get alice@example.org\n" * 100_000)
            answered = await until_steady(lambda: sum(server.lookups.counts.values()))
            os.kill(os.getpid(), signal.SIGTERM)
            assert await idle.rest() == b""  # an idle connection is closed at once
            await wait_for(
                lambda: len(server.loop.connections) == 1, "the idle connection to close"
            )
            with pytest.raises(OSError):  # the listener is closed
                await trio.open_tcp_stream("127.0.0.1", port)
            assert len(server.loop.connections) == 1  # the reply in flight has its grace period
            received = bytearray()
            try:
                while data := await stuck.recv(1 << 16):
                    received += data
            except ConnectionResetError:
                pass  # closed with requests unread: the kernel resets
            stuck.close()
    assert len(server.loop.connections) == 0
    assert "SIGTERM received: stopping" in log.messages(logging.INFO)
    replies = bytes(received).split(b"\n")[:-1]
    assert 0 < len(replies) <= sum(server.lookups.counts.values())
    assert answered <= sum(server.lookups.counts.values())
    assert len(set(replies)) == 1
    assert replies[0].startswith(b"200 SRS0=")
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", port)


async def test_bad_request_log_lines_are_rate_limited(
    tmp_path: Path, log: CapturedLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Garbage comes as fast as a client sends it; the log gets a few lines a second and
    # one line counting the rest, while every bad request is still answered and counted.
    # The rate limit's clock (time.monotonic) is held still, then moved on: no second
    # boundary can fall in the middle of the burst, however slow the machine.
    clock = [time.monotonic()]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    count = 500
    async with serving(tmp_path) as srv:
        c = await srv.connect(Role.FORWARD)
        await c.send(b"bogus\n" * count)
        refusal = b"500 Invalid%20request,%20expected%20'get%20KEY'\n"
        assert await c.lines(count) == [refusal] * count
        clock[0] += 1.1
        await c.send(b"bogus\n")
        await c.lines(1)
        assert srv.server.lookups.counts[("tcp_table", "forward", "bad request")] == count + 1
    logged = [m for m in log.messages() if "bad request: Invalid request" in m]
    assert len(logged) == BAD_REQUEST_LOG_RATE + 1
    assert f"{count - BAD_REQUEST_LOG_RATE} more bad requests not logged" in log.messages()
