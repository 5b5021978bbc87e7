# Admission control in a real server over real sockets: eviction, shares, allowed users, deadlines.
"""The in-process trio server (``tests/harness/inprocess.py``'s ``serving``) with small limits;
every client here is this process, so one user (root, or whoever runs the tests): the
shares between different users are in ``tests/test_admission_attacks.py``.

* full: a new connection evicts the connection idle the longest (which sees EOF), and is
  served; counted and logged once per 10 s;
* at the per-user share: the user's own longest idle connection gives way;
* every connection being answered (a lookup waiting for storage): a new one is closed at
  once, unanswered, counted as rejected; a connection waiting for a client that does not
  read its replies is not being answered, and may be evicted;
* ``allowed_users``: another user's connection is closed at once, counted, logged;
* ``request_timeout``: a request that started and did not end in time closes the
  connection (counted, logged); complete requests, however slow between them, and a
  connection that sent nothing are left to the idle time-out; a reload applies new limits.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import trio

from srsd.serve.listeners import Endpoint
from srsd.serve.loop import Later, Service
from srsd.serve.server import Server
from srsd.srs.policy import Role
from tests.harness.inprocess import (
    TIMEOUT,
    CapturedLog,
    Client,
    connect_small_window,
    send_until_closed,
    serving,
    wait_for,
)

ME = str(os.geteuid())


async def asked(client: Client) -> Client:
    assert (await client.ask(b"bob")).startswith(b"500 ")  # served
    return client


async def test_full_evicts_the_longest_idle(tmp_path: Path, log: CapturedLog) -> None:
    async with serving(tmp_path, max_connections=3, max_connections_per_user=3) as srv:
        server = srv.server
        first = [
            await asked(await srv.connect(role))
            for role in (Role.FORWARD, Role.REVERSE, Role.FORWARD)
        ]
        await asked(first[0])  # now first[1] is the one idle the longest
        extra = await asked(await srv.connect(Role.REVERSE))  # shares the limit of both ports
        assert await first[1].rest() == b""  # evicted
        assert server.gate.counts["evicted"] == 1
        assert len(server.loop.connections) == 3
        extra2 = await asked(await srv.connect(Role.FORWARD))
        assert await first[2].rest() == b""
        for client in (first[0], extra, extra2):
            await asked(client)
        assert (server.gate.counts["evicted"], server.gate.counts["refused full"]) == (2, 0)
        lines = [m for m in log.messages(logging.WARNING) if "evicted" in m]
        assert lines == [
            f"evicted the longest idle connection of uid {ME} to admit one of "
            f"uid {ME} (max_connections 3, per user 3)"
        ]  # once per 10 s


async def test_a_user_at_its_share_evicts_its_own(tmp_path: Path) -> None:
    async with serving(tmp_path, max_connections=10, max_connections_per_user=2) as srv:
        a = await asked(await srv.connect())
        b = await asked(await srv.connect())
        await asked(a)
        c = await asked(await srv.connect())  # at the share (2): b, idle the longest, goes
        assert await b.rest() == b""
        await asked(a)
        await asked(c)
        assert srv.server.gate.counts["evicted"] == 1
        assert len(srv.server.loop.connections) == 2


class HeldService:
    """A tcp_table service whose answer to ``get hold`` waits until released (as a lookup
    waiting for the envelope database does): the connection is being answered."""

    def __init__(self, inner: Service, release: trio.Event) -> None:
        self.inner = inner
        self.release = release
        self.idle_limit = inner.idle_limit
        self.transaction_limit = inner.transaction_limit
        self.reader = inner.reader
        self.in_transaction = inner.in_transaction
        self.discard = inner.discard

    def answer(self, event: object) -> bytes | Later:
        if getattr(event, "key", None) == b"hold":
            return self.held
        return self.inner.answer(event)

    async def held(self) -> bytes:
        await self.release.wait()
        return b"500 released\n"


class HoldingServer(Server):
    release: trio.Event | None = None

    def service(self, endpoint: Endpoint) -> Service:
        if self.release is None:  # one for every endpoint
            self.release = trio.Event()
        return HeldService(super().service(endpoint), self.release)


async def test_connections_being_answered_are_never_evicted(tmp_path: Path) -> None:
    # Full with one connection whose request is being answered (waiting for storage): a
    # new connection cannot evict it and is closed at once, unanswered, counted.
    async with serving(tmp_path, HoldingServer, max_connections=1) as srv:
        server = srv.server
        assert isinstance(server, HoldingServer)
        held = await srv.connect()
        await held.send(b"get hold\n")
        await wait_for(
            lambda: any(c.answering for c in server.loop.connections),
            "the held request to be taken up",
        )
        late = await srv.connect()
        assert await late.rest(reset_ok=True) == b""
        assert (server.gate.counts["refused full"], server.gate.counts["evicted"]) == (1, 0)
        assert server.release is not None
        server.release.set()
        assert await held.line() == b"500 released\n"
        assert (await held.ask(b"bob")).startswith(b"500 ")  # still served


async def test_a_client_that_does_not_read_may_be_evicted(tmp_path: Path, quiet_log: None) -> None:
    # A connection pipelining requests and reading nothing waits for the client once its
    # replies fill the socket buffers: the client holds it up, not srsd. Full, a new
    # connection evicts it.
    payload = b"".join(b"get u%06d@example.org\n" % i for i in range(60_000))
    async with serving(tmp_path, max_connections=1) as srv:
        server = srv.server
        sock = await connect_small_window(srv.forward)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_until_closed, sock, payload)
            await wait_for(
                lambda: any(c.stalled for c in server.loop.connections),
                "the pipelining client to hold up its replies",
            )
            late = await asked(await srv.connect(Role.REVERSE))
            assert (server.gate.counts["evicted"], server.gate.counts["refused full"]) == (1, 0)
            await asked(late)
            nursery.cancel_scope.cancel()
        sock.close()


async def test_only_allowed_users_are_served(tmp_path: Path, log: CapturedLog) -> None:
    async with serving(tmp_path, allowed_users=["65534"]) as srv:  # nobody: not us
        for role in (Role.FORWARD, Role.REVERSE, Role.FORWARD):
            refused = await srv.connect(role)
            await refused.send(b"get bob\n")
            assert await refused.rest(reset_ok=True) == b""  # closed, never answered
        assert srv.server.gate.counts["refused user"] == 3
        assert sum(srv.server.lookups.counts.values()) == 0
        lines = [m for m in log.messages(logging.WARNING) if "allowed_users" in m]
        assert lines == [f"refused a connection of uid {ME}: not in allowed_users"]
    async with serving(tmp_path, allowed_users=["nobody", ME]) as srv:
        await asked(await srv.connect())
        assert srv.server.gate.counts["refused user"] == 0


async def test_a_request_must_end_in_time(
    tmp_path: Path, log: CapturedLog, autojump_clock: trio.abc.Clock
) -> None:
    # On trio's autojump clock: the time-outs take no real time.
    async with serving(tmp_path, request_timeout=5, idle_timeout=60) as srv:
        server = srv.server
        started = trio.current_time()
        partial = await srv.connect()
        await partial.send(b"get bo")
        slow = await srv.connect()  # complete requests, slowly: never timed out
        silent = await srv.connect()  # nothing at all: the idle time-out's business
        for _ in range(3):
            await trio.sleep(3)
            await asked(slow)
            await slow.send(b"get b")  # the next request begins ...
            await trio.sleep(3)
            await slow.send(b"ob\n")  # ... and ends within 5 s
            assert (await slow.line()).startswith(b"500 ")
        assert await partial.rest() == b""
        took = trio.current_time() - started
        assert 5 <= took < 5 + 15
        assert server.gate.counts["timed out"] == 1
        await asked(silent)
        lines = [m for m in log.messages(logging.WARNING) if "request_timeout" in m]
        assert lines == [
            f"closed a connection of uid {ME}: its request did not end within request_timeout (5 s)"
        ]


async def test_reload_applies_new_limits(tmp_path: Path) -> None:
    config = tmp_path / "srsd.toml"
    config.write_text("max_connections_per_user = 1\n")
    async with serving(tmp_path, reload_from_files=True, config=config, max_connections=10) as srv:
        a = await asked(await srv.connect())
        b = await asked(await srv.connect())
        assert await a.rest() == b""  # the share is 1
        config.write_text('allowed_users = ["nobody"]\nrequest_timeout = 0.3\n')
        assert srv.server.reload()
        assert srv.server.loop.request_timeout == 0.3
        refused = await srv.connect()
        assert await refused.rest(reset_ok=True) == b""
        assert srv.server.gate.counts["refused user"] == 1
        await asked(b)  # open connections stay
        config.write_text('allowed_users = ["no-such-user-here"]\n')
        assert not srv.server.reload()  # refused, the previous limits kept
        with trio.fail_after(TIMEOUT):
            refused = await srv.connect()
            assert await refused.rest(reset_ok=True) == b""
