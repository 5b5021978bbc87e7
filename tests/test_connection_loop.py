# What the connection loop makes new: one pass for every ready connection, slow paths, fairness.
"""The reactor of :mod:`srsd.serve.loop` seen from its clients, in-process, on loopback.

A real :class:`srsd.serve.server.Server` (the harness of ``test_server.py``) serves real sockets.
Asserted are behaviours the one-readiness-set loop must keep: requests of many connections
that are ready together are all answered in one pass, each connection's in order; a
connection that closes or resets while others are served disturbs nobody; a lookup waiting
for the envelope database holds up its own connection only; and a client pipelining tens of
thousands of requests does not starve a lockstep one. Ordering and counts only: no timing
is asserted, and every wait is bounded by :data:`TIMEOUT`.
"""

from __future__ import annotations

import select
import socket
import struct
import time
from pathlib import Path

import trio

from srsd.envelope.store import EnvelopeStore
from srsd.serve.loop import ANSWERS_PER_PASS
from srsd.serve.server import Server
from srsd.srs.policy import Role
from tests.harness.inprocess import TIMEOUT, forward_replies, serving, srs0, wait_for


class StepWatch(trio.abc.Instrument):
    """The most requests the server answered in one task step (one pass of the loop)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.start = 0
        self.most = 0

    def _answered(self) -> int:
        return sum(self.server.lookups.counts.values())

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.start = self._answered()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        self.most = max(self.most, self._answered() - self.start)


async def read_lines(sock: trio.socket.SocketType, count: int) -> list[bytes]:
    """``count`` reply lines from ``sock`` (EOFError if it closes first)."""
    data = bytearray()
    with trio.fail_after(TIMEOUT):
        while data.count(b"\n") < count:
            chunk = await sock.recv(65536)
            if not chunk:
                raise EOFError(f"EOF after {bytes(data)!r}")
            data += chunk
    lines = bytes(data).split(b"\n")
    assert lines[count:] == [b""], "more than asked for"
    return [line + b"\n" for line in lines[:count]]


def wait_readable_now(socks: list[socket.socket]) -> None:
    """Block (this thread, so the server cannot run) until every socket has input."""
    deadline = time.monotonic() + TIMEOUT
    pending = list(socks)
    while pending:
        assert time.monotonic() < deadline, "the requests did not arrive"
        ready, _, _ = select.select(pending, [], [], 0.1)
        pending = [s for s in pending if s not in ready]


async def open_idle(srv_port: int, count: int, server: Server) -> list[socket.socket]:
    """``count`` client sockets connected and accepted, nothing sent yet."""
    before = len(server.loop.connections)
    clients = [
        socket.create_connection(("127.0.0.1", srv_port), timeout=TIMEOUT) for _ in range(count)
    ]
    await wait_for(lambda: len(server.loop.connections) == before + count, "the accepts")
    return clients


async def test_every_connection_ready_in_one_pass_is_answered_in_that_pass(
    tmp_path: Path,
) -> None:
    conns, per_conn = 40, 10
    assert per_conn <= ANSWERS_PER_PASS
    async with serving(tmp_path) as srv:
        server = srv.server
        clients = await open_idle(srv.forward, conns, server)
        served = [c.sock for c in server.loop.connections]
        watch = StepWatch(server)
        trio.lowlevel.add_instrument(watch)
        try:
            # Without letting the server run: every connection sends its requests, and
            # they are all in the server's sockets before it looks.
            t0 = time.time()
            for i, client in enumerate(clients):
                client.sendall(
                    b"".join(b"get u%d.%d@example.org\n" % (i, j) for j in range(per_conn))
                )
            wait_readable_now(served)
            replies = []
            for client in clients:
                replies.append(await read_lines(trio.socket.from_stdlib_socket(client), per_conn))
            t1 = time.time()
        finally:
            trio.lowlevel.remove_instrument(watch)
        for i, lines in enumerate(replies):  # each connection's replies, in its order
            for j, line in enumerate(lines):
                assert line in forward_replies(b"u%d.%d" % (i, j), b"example.org", t0, t1)
        # one pass answered all of them
        assert watch.most == conns * per_conn
        for client in clients:
            client.close()


async def test_connections_closing_within_a_pass_disturb_nobody(tmp_path: Path) -> None:
    async with serving(tmp_path) as srv:
        server = srv.server
        clients = await open_idle(srv.reverse, 30, server)
        served = [c.sock for c in server.loop.connections]
        # In one pass: ten connections send a request and reset, ten send one and close
        # their side (EOF), ten send two and stay.
        for n, client in enumerate(clients):
            kind = n % 3
            client.sendall(b"get x%d@example.org\n" % n * (2 if kind == 2 else 1))
            if kind == 0:
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()  # a reset
            elif kind == 1:
                client.shutdown(socket.SHUT_WR)
        wait_readable_now(served)
        staying = [trio.socket.from_stdlib_socket(c) for n, c in enumerate(clients) if n % 3 == 2]
        leaving = [trio.socket.from_stdlib_socket(c) for n, c in enumerate(clients) if n % 3 == 1]
        for sock in staying:
            assert await read_lines(sock, 2) == [b"500 Not%20an%20SRS%20address.\n"] * 2
        for sock in leaving:  # answered, then closed
            assert await read_lines(sock, 1) == [b"500 Not%20an%20SRS%20address.\n"]
            with trio.fail_after(TIMEOUT):
                assert await sock.recv(100) == b""
        await wait_for(lambda: len(server.loop.connections) == len(staying), "the closes")
        # the connections that stayed are still served, and so is a new one
        now = time.time()
        for sock in staying:
            await sock.send(b"get " + srs0(b"bob", b"example.net", now) + b"\n")
            assert await read_lines(sock, 1) == [b"200 bob@example.net\n"]
        new = await srv.connect(Role.REVERSE)
        assert await new.ask(b"carol@example.org") == b"500 Not%20an%20SRS%20address.\n"
        answered = server.lookups.counts[("tcp_table", "reverse", "not SRS")]
        # two requests from each staying, one from each leaving and from the new connection,
        # and one from each reset one unless the reset came before it was read
        assert 20 + 10 + 1 <= answered <= 20 + 10 + 1 + 10
        for sock in staying + leaving:
            sock.close()


class GatedStore:
    """The server's real envelope store, whose writes wait until the test opens the gate."""

    def __init__(self, store: EnvelopeStore) -> None:
        self.store = store
        self.description = store.description
        self.remote = store.remote
        self.gate = trio.Event()
        self.waiting = 0

    @property
    def generation(self) -> int:
        return self.store.generation

    @property
    def recovered(self) -> int:
        return self.store.recovered

    async def put(self, key: bytes, sender: bytes, now: float) -> None:
        self.waiting += 1
        with trio.fail_after(TIMEOUT):
            await self.gate.wait()
        await self.store.put(key, sender, now)

    async def get(self, key: bytes, now: float) -> bytes | None:
        return await self.store.get(key, now)

    async def expire(self, now: float) -> int:
        return await self.store.expire(now)

    async def check(self) -> None:
        await self.store.check()

    async def aclose(self) -> None:
        await self.store.aclose()


async def test_a_lookup_waiting_for_storage_holds_up_its_own_connection_only(
    tmp_path: Path,
) -> None:
    (tmp_path / "state").mkdir()
    async with serving(tmp_path, original_envelope="database") as srv:
        server = srv.server
        gated = GatedStore(server.envelopes.store)
        server.envelopes.store = gated
        waiting = await srv.connect(Role.FORWARD)
        # two requests: the first waits for the database, the second (which needs none)
        # queues behind it on the same connection
        await waiting.send(b"get alice@example.org\nget bob\n")
        await wait_for(lambda: gated.waiting == 1, "the write to start")
        # meanwhile other connections are answered, lookups and bad requests alike
        others = [await srv.connect(Role.FORWARD), await srv.connect(Role.REVERSE)]
        for _ in range(50):
            assert await others[0].ask(b"bob") == b"500 no%20domain\n"
            assert await others[1].ask(b"x@example.org") == b"500 Not%20an%20SRS%20address.\n"
            await others[0].send(b"put x\n")
            assert (await others[0].line()).startswith(b"500 Invalid%20request")
        assert waiting.buffer == b""
        with trio.move_on_after(0.2):  # nothing comes while the database has not answered
            assert await waiting.stream.receive_some(100) == b"", "answered too early"
        assert server.lookups.counts[("tcp_table", "forward", "rewritten")] == 0
        gated.gate.set()
        first, second = await waiting.lines(2)
        assert first.startswith(b"200 SRS0=") and first.endswith(b"@forwarder.test\n")
        assert b"=1=" in first  # through the database: the address carries the key
        assert second == b"500 no%20domain\n"
        # back in the loop: the connection is served as before
        assert (await waiting.ask(b"carol@example.net")).startswith(b"200 SRS0=")
        assert server.lookups.counts[("tcp_table", "forward", "rewritten")] == 2


async def test_a_client_pipelining_thousands_does_not_starve_a_lockstep_one(
    tmp_path: Path,
) -> None:
    requests, rounds = 50_000, 30
    async with serving(tmp_path) as srv:
        server = srv.server
        flood = await srv.connect(Role.FORWARD)
        lockstep = await srv.connect(Role.REVERSE)
        payload = b"".join(b"get p%d@example.org\n" % i for i in range(requests))
        flooded_at_end = 0
        replies: list[bytes] = []

        async def read_flood() -> None:
            replies.extend(await flood.lines(requests))

        t0 = time.time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(flood.send, payload)
            nursery.start_soon(read_flood)
            # the flood is being answered before the lockstep client starts
            await wait_for(
                lambda: server.lookups.counts[("tcp_table", "forward", "rewritten")] > 0,
                "the flood to be answered",
            )
            for _ in range(rounds):
                assert await lockstep.ask(b"y@example.org") == b"500 Not%20an%20SRS%20address.\n"
            flooded_at_end = server.lookups.counts[("tcp_table", "forward", "rewritten")]
        t1 = time.time()  # all of the flood is answered, in order
        # the lockstep client was done while most of the flood was still to be answered
        assert flooded_at_end < requests // 2, flooded_at_end
        for i in (0, 1, requests // 2, requests - 1):
            user = b"p%d" % i
            assert replies[i] in forward_replies(user, b"example.org", t0, t1), i
        assert server.lookups.counts[("tcp_table", "forward", "rewritten")] == requests
